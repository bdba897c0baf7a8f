"""AOT: the real sharded step compiles for a TPU topology on this CPU machine (libtpu), and bad
configs fail before compiling with the key named."""
import pytest

from blip_jax import aot
from blip_jax.models.param_count import count
from blip_jax.train import build
from experiments import pretrain_base_14m, pretrain_large_129m


def test_tiny_config_compiles_for_v5p_topology():
  cfg = pretrain_base_14m.get_config("cpu")
  devices = aot.topology_devices("v5p:2x2x2")
  assert len(devices) == 8 and devices[0].device_kind == "TPU v5"
  r = aot.compile_step(cfg, devices)
  assert r["mesh"] == (8, 1, 1) and r["trainable_params"] == 1_096_335
  assert 0 < r["per_device_bytes"] < r["hbm_bytes"]
  assert r["alias_bytes"] > 0  # the state is donated
  text = aot.format_report(r)
  assert "fits" in text and "1,096,335" in text


def test_paper_configs_resolve():
  b = pretrain_base_14m.get_config()
  from blip_jax.train.sharding import DEFAULT_RULES
  assert build.sharding_rules(b) == [(n, tuple(a) if isinstance(a, tuple) else a) for n, a in DEFAULT_RULES]
  assert build.mesh_shape(b, 64) == (64, 1, 1)
  obj = build.objective(b, (64, 1, 1))
  assert obj.queue_size == 57600 and obj.negative_groups == 64 and obj.alpha == 0.4
  from blip_jax.models import param_shapes
  assert count(param_shapes(build.model_config(b))) == 252_441_919
  large = pretrain_large_129m.get_config()
  assert build.mesh_shape(large, 64) == (32, 1, 2) and build.model_config(large).vision.width == 1024


@pytest.mark.parametrize("key, value, message", [
    ("global_batch", 2881, r"config.global_batch=2881 is not divisible by the 64 data shards"),
    ("objective.queue_size", 57601, r"config.queue_size=57601 is not a multiple of the global batch 2880"),
    ("mesh", (-1, -1, 1), r"config.mesh=\(-1, -1, 1\): three sizes"),
    ("model.vision", "vit_h14", r"config.model.vision='vit_h14'"),
])
def test_bad_configs_name_the_key(key, value, message):
  cfg = pretrain_base_14m.get_config()
  node, leaf = (cfg, key) if "." not in key else (getattr(cfg, key.split(".")[0]), key.split(".")[1])
  setattr(node, leaf, value)
  with pytest.raises(ValueError, match=message):
    mesh = build.mesh_shape(cfg, 64)
    build.model_config(cfg)
    build.objective(cfg, mesh)

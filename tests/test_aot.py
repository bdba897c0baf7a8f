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
  assert "fits" in text and "1,096,335" in text and "all-gathers" in text
  _no_per_layer_kv_gathers(r, cfg.global_batch, build.experiment(cfg, 8).model)


def _no_per_layer_kv_gathers(r, global_batch, model):
  """Guard for issue 14's regression. Gathering each layer's cross-attention K/V by a data-dependent
  index over the sharded batch made XLA all-gather the global batch's K and V in every text layer:
  ViT-B on v5p-64 went from 15.5 to 55.6 GiB of temporaries per chip (here: 4 all-gathers of
  (16, 17, 32) K/V). The layout of tasks/pretrain.itm_pair_logits gathers only the negative images'
  tokens, once. Bound: nothing of K/V shape, and all gathered bytes within twice the global batch's
  image tokens in float32 plus 64 KiB of ids and features."""
  n_img, d_text = model.vision.num_tokens, model.text.hidden_size
  gathers = r["all_gathers"]
  kv_like = [g for g in gathers if g[1] == (global_batch, n_img, d_text)]
  assert not kv_like, f"per-layer K/V all-gathered: {kv_like}"
  bound = 2 * global_batch * n_img * model.vision.width * 4 + 64 * 1024
  assert sum(g[2] for g in gathers) <= bound, gathers


def test_paper_configs_resolve():
  b = pretrain_base_14m.get_config()
  exp = build.experiment(b, 64)
  assert dict(exp.rules)["batch"] == ("data", "fsdp") and dict(exp.rules)["vocab"] is None
  assert exp.mesh_shape == (64, 1, 1)
  obj = exp.objective
  assert obj.queue_size == 57600 and obj.negative_groups == 64 and obj.alpha == 0.4
  from blip_jax.models import param_shapes

  assert count(param_shapes(exp.model)) == 252_441_919
  large = build.experiment(pretrain_large_129m.get_config(), 64)
  assert large.mesh_shape == (32, 1, 2) and large.model.vision.width == 1024


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("global_batch", 2881, r"config.global_batch=2881 is not divisible by the 64 data shards"),
    ("objective.queue_size", 57601, r"config.queue_size=57601 is not a multiple of the global batch 2880"),
    ("mesh", (-1, -1, 1), r"config.mesh=\(-1, -1, 1\): three sizes"),
    ("model.vision", "vit_h14", r"config.model.vision='vit_h14'"),
    ("optimizer.peak_lr", -1e-3, r"config.optimizer.peak_lr=-0.001: must be > 0"),
    ("global_batch", 0, r"config.global_batch=0: must be >= 1"),
    ("model.dtype", "fp16", r"config.model.dtype='fp16': must be one of"),
    ("epochs", "3", r"config.epochs='3': must be an integer"),
  ],
)
def test_bad_configs_name_the_key(key, value, message):
  cfg = pretrain_base_14m.get_config()
  node, leaf = (cfg, key) if "." not in key else (getattr(cfg, key.split(".")[0]), key.split(".")[1])
  with node.ignore_type():
    setattr(node, leaf, value)
  with pytest.raises(ValueError, match=message):
    build.experiment(cfg, 64)

"""Data, FSDP and tensor parallelism agree with one device: 3 steps of the tiny model on meshes
(8,1,1), (1,8,1), (2,4,1), (2,2,2) of the 8 simulated CPU devices, float32, AdamW, dropout on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from blip_jax.models import tiny
from blip_jax.tasks.pretrain import Objective, init_state, make_train_step
from blip_jax.train import sharding as S
from blip_jax.train.optimizer import make_optimizer, pretrain_schedule
from experiments.common import SHARDING_RULES

CONFIG = tiny("pretrain")
OBJ = Objective(queue_size=16, alpha_ramp_steps=2)
TX = make_optimizer(pretrain_schedule(1e-4, 2, 10))
STEPS = 3


def _batch():
  rng = np.random.default_rng(0)
  return {
    "images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
    "ids": np.concatenate([np.full((8, 1), 101), rng.integers(1000, 1100, (8, 5))], 1).astype(np.int32),
    "mask": np.concatenate([np.ones((8, 4)), (np.arange(16).reshape(8, 2) % 3 > 0)], 1).astype(np.int32),
  }


def _run(shape):
  mesh = S.make_mesh(shape, jax.devices()[: int(np.prod(shape))])
  template = jax.eval_shape(lambda: init_state(CONFIG, OBJ, TX, jax.random.key(0)))
  sh = S.state_shardings(CONFIG, TX, mesh, SHARDING_RULES, template=template)
  bsh = S.batch_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(SHARDING_RULES):
    state = jax.jit(lambda r: init_state(CONFIG, OBJ, TX, r), out_shardings=sh)(jax.random.key(0))
    born = state["params"]["text"]["layer_0"]["intermediate"]["kernel"].sharding
    step = jax.jit(make_train_step(CONFIG, OBJ, TX), in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
    batch = jax.device_put(_batch(), bsh)
    losses = []
    for _ in range(STEPS):
      state, m = step(state, batch)
      losses.append({k: float(v) for k, v in m.items() if k.startswith("loss")})
  return {
    "losses": losses,
    "params": jax.tree.map(np.asarray, state["params"]),
    "momentum": jax.tree.map(np.asarray, state["momentum"]),
    "queue": np.asarray(state["queues"]["image"]),
    "born": born,
    "opt_state": state["opt_state"],
  }


@pytest.fixture(scope="module")
def one_device(devices):
  return _run((1, 1, 1))


def _zero_grad_entries(path: str, x: np.ndarray) -> np.ndarray:
  """Key biases: their gradient is exactly zero in exact arithmetic (a key bias adds the same q.b to
  every logit of a row; softmax ignores it). Adam divides ~1e-9 float noise by its own root mean
  square there and moves them by ~lr per step, differently on every layout. Mask them out."""
  mask = np.zeros(x.shape, bool)
  if path.endswith("['key']['bias']"):
    mask[:] = True
  if path.endswith("['qkv']['bias']"):  # ViT fused [q | k | v]: the middle third
    d = x.shape[0] // 3
    mask[d : 2 * d] = True
  return mask


@pytest.mark.parametrize(
  "shape",
  [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),  # the data axis is also in (2, 2, 2)
    pytest.param((1, 8, 1), marks=pytest.mark.slow),
    pytest.param((2, 4, 1), marks=pytest.mark.slow),
    (2, 2, 2),
  ],
)
def test_mesh_matches_one_device(shape, one_device):
  out = _run(shape)
  for a, b in zip(one_device["losses"], out["losses"]):
    for k in a:
      assert abs(a[k] - b[k]) <= 1e-5, (shape, k, a[k], b[k])
  for tree in ("params", "momentum"):
    for (kp, x), y in zip(jax.tree_util.tree_flatten_with_path(one_device[tree])[0], jax.tree.leaves(out[tree])):
      path = jax.tree_util.keystr(kp)
      keep = ~_zero_grad_entries(path, x)
      err = float(np.abs(x - y)[keep].max()) if keep.any() else 0.0
      assert err <= 1e-5, (shape, tree, path, err)
      assert float(np.abs(x - y).max()) <= 1e-4 * STEPS  # masked entries: at most ~lr per step
  np.testing.assert_allclose(out["queue"], one_device["queue"], atol=1e-5)
  if shape == (2, 2, 2):  # params and Adam moments are born sharded by the logical rules
    assert out["born"].spec == P("fsdp", "tensor")  # ("embed", "mlp")
    moments = [
      leaf
      for kp, leaf in jax.tree_util.tree_flatten_with_path(out["opt_state"])[0]
      if "['layer_0']['intermediate']['kernel']" in jax.tree_util.keystr(kp)
    ]
    assert len(moments) == 2 and all(m.sharding.spec == P("fsdp", "tensor") for m in moments)


def test_key_bias_gradient_is_numerically_zero():
  """The premise of _zero_grad_entries, checked on the real loss."""
  from blip_jax.models import Blip, init_params

  p = init_params(CONFIG, jax.random.key(0))
  b = _batch()

  def loss(params):
    o = Blip(CONFIG).apply({"params": params}, jnp.asarray(b["images"]), jnp.asarray(b["ids"]), jnp.asarray(b["mask"]))
    return o["logits"].sum() + o["itm_logits"].sum() + o["image_feat"].sum() + o["text_feat"].sum()

  g = jax.jit(jax.grad(loss))(p)
  mx = lambda x: float(jnp.abs(x).max())
  attn = g["text"]["layer_0"]["attention"]["self"]
  print("text key/query bias grad", mx(attn["key"]["bias"]), mx(attn["query"]["bias"]))
  assert mx(attn["key"]["bias"]) < 1e-6 and mx(attn["query"]["bias"]) > 1e3 * mx(attn["key"]["bias"])
  qkv = g["visual_encoder"]["blocks_0"]["attn"]["qkv"]["bias"]
  d = qkv.shape[0] // 3
  print("vit k/q bias grad", mx(qkv[d : 2 * d]), mx(qkv[:d]))
  assert mx(qkv[d : 2 * d]) < 1e-6 and mx(qkv[:d]) > 1e3 * mx(qkv[d : 2 * d])


def test_mesh_needs_matching_device_count(devices):
  import ml_collections

  from blip_jax.train import build

  with pytest.raises(ValueError, match=r"config.mesh=\(2, 2, 3\) needs 12 devices, 8 available"):
    build.mesh_shape(ml_collections.ConfigDict(dict(mesh=(2, 2, 3))), len(devices))

"""Model structure and behaviour: counts, logical axes, precision, remat, dropout, NLVR2 room."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.models import Blip, BlipConfig, init_params, param_logical_axes, param_shapes, tiny, vit_b16, vit_l16
from blip_jax.models.momentum import momentum_view
from blip_jax.models.param_count import count, report


def test_vit_b_pretraining_counts_are_official():
  shapes = param_shapes(BlipConfig(task="pretrain", vision=vit_b16(224)))
  assert count(shapes) == 252_441_919
  assert count(shapes) + count(momentum_view(shapes)) == 475_892_799
  assert "252,441,919" in report(shapes, momentum_view(shapes))


def test_vit_l_pretraining_builds():
  shapes = param_shapes(BlipConfig(task="pretrain", vision=vit_l16(224)))
  v = shapes["visual_encoder"]
  assert v["blocks_23"]["attn"]["qkv"]["kernel"].shape == (1024, 3072)
  # cross-attention K/V take the 1024-wide image tokens
  assert shapes["text"]["layer_0"]["crossattention"]["self"]["key"]["kernel"].shape == (1024, 768)


def test_every_kernel_has_logical_axes():
  axes = param_logical_axes(tiny("pretrain"))
  shapes = param_shapes(tiny("pretrain"))
  flat_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  by_path = {tuple(k.key for k in kp): spec for kp, spec in flat_axes}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    path = tuple(k.key for k in kp)
    spec = by_path[path]
    assert len(spec) == len(leaf.shape), path
    if path[-1] in ("kernel", "embedding"):
      assert len(leaf.shape) == 2 and all(a is not None for a in spec), (path, spec)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  return (
    jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
    jnp.asarray(rng.integers(1000, 2000, (2, 6))),
    jnp.ones((2, 6), jnp.int32),
  )


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(batch):
  c32 = tiny("pretrain")
  c16 = c32.replace(dtype="bfloat16")
  p = init_params(c16, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
  o32 = jax.jit(Blip(c32).apply)({"params": p}, *batch)
  o16 = jax.jit(Blip(c16).apply)({"params": p}, *batch)
  assert o16["image_embeds"].dtype == jnp.bfloat16 and o16["logits"].dtype == jnp.float32
  err = float(jnp.abs(o16["logits"] - o32["logits"]).max())
  assert 0 < err < 0.25 * float(jnp.abs(o32["logits"]).max())


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_same_values_and_grads(batch, policy):
  c = tiny("pretrain")
  cr = c.replace(vision_remat=policy, text_remat=policy)
  p = init_params(c, jax.random.key(0))

  def loss(params, cfg):
    o = Blip(cfg).apply({"params": params}, *batch)
    return o["logits"].mean() + o["itm_logits"].sum() + o["image_feat"].sum()

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  l0, g0 = grad(p, c)
  l1, g1 = grad(p, cr)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):  # recomputation reorders float32 sums
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dropout_and_drop_path_only_in_training(batch):
  c = tiny("pretrain")
  c = c.replace(vision=dataclasses.replace(c.vision, drop_path_rate=0.3))
  p = init_params(c, jax.random.key(0))
  m = Blip(c)
  ev1 = m.apply({"params": p}, *batch, train=False)
  ev2 = m.apply({"params": p}, *batch, train=False, rngs={"dropout": jax.random.key(5)})
  np.testing.assert_array_equal(ev1["logits"], ev2["logits"])
  tr1 = m.apply({"params": p}, *batch, train=True, rngs={"dropout": jax.random.key(1)})
  tr2 = m.apply({"params": p}, *batch, train=True, rngs={"dropout": jax.random.key(2)})
  assert float(jnp.abs(tr1["logits"] - tr2["logits"]).max()) > 1e-3
  assert float(jnp.abs(tr1["image_embeds"] - tr2["image_embeds"]).max()) > 1e-3


def test_nlvr2_two_branch_cross_attention_reduces_to_one_branch():
  """With both branches given the same weights and the same image, the averaging layers equal the
  single-branch layer; merge layers exist from cross_merge_from_layer on, with a 2D -> D kernel."""
  from blip_jax.models.med import MED

  base = tiny("itm").text
  twin = dataclasses.replace(base, num_cross_branches=2, cross_merge_from_layer=1)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 2000, (2, 5)))
  mask = jnp.ones((2, 5), jnp.int32)
  img = jnp.asarray(rng.normal(size=(2, 9, 48)), jnp.float32)
  p2 = MED(twin).init(jax.random.key(0), ids, mask, mode="multimodal", encoder_states=(img, img))["params"]
  p2 = jax.tree.map(lambda x: getattr(x, "value", x), p2, is_leaf=lambda x: hasattr(x, "value"))
  cross0 = p2["layer_0"]["crossattention"]
  assert set(cross0) == {"self0", "self1", "output"} and set(cross0["output"]) == {"dense0", "dense1", "LayerNorm"}
  assert p2["layer_1"]["crossattention"]["output"]["merge_layer"]["kernel"].shape == (64, 32)
  # single-branch params built from branch 0; layer 0 (averaging) must agree with it
  one = dataclasses.replace(base, num_layers=1)
  layer = dict(p2["layer_0"])
  cross = {
    "self": cross0["self0"],
    "output": {"dense": cross0["output"]["dense0"], "LayerNorm": cross0["output"]["LayerNorm"]},
  }
  layer["crossattention"] = cross
  p1 = {"embeddings": p2["embeddings"], "layer_0": layer}
  p2b = jax.tree.map(lambda x: x, p2)
  p2b["layer_0"]["crossattention"]["self1"] = cross0["self0"]
  p2b["layer_0"]["crossattention"]["output"]["dense1"] = cross0["output"]["dense0"]
  twin1 = dataclasses.replace(twin, num_layers=1)
  p2b = {"embeddings": p2b["embeddings"], "layer_0": p2b["layer_0"]}
  out1 = MED(one).apply({"params": p1}, ids, mask, mode="multimodal", encoder_states=img)
  out2 = MED(twin1).apply({"params": p2b}, ids, mask, mode="multimodal", encoder_states=(img, img))
  np.testing.assert_allclose(out1, out2, atol=1e-6)


@pytest.mark.parametrize(
  "bad, key",
  [
    (dict(task="nope"), "config.task"),
    (dict(vision=dataclasses.replace(vit_b16(), image_size=230)), "config.vision.image_size"),
    (dict(text_remat="sometimes"), "config.text_remat"),
  ],
)
def test_bad_config_names_the_key(bad, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    BlipConfig(**bad)


def test_config_dict_roundtrip_and_unknown_key():
  c = tiny("vqa")
  assert BlipConfig.from_dict(c.to_dict()) == c
  d = c.to_dict()
  d["vision"]["widht"] = 3
  with pytest.raises(ValueError, match=r"config\.vision: unknown keys \['widht'\]"):
    BlipConfig.from_dict(d)


def test_wrong_image_size_is_a_clear_error(batch):
  c = tiny("caption")
  p = init_params(c, jax.random.key(0))
  with pytest.raises(ValueError, match="pos_embed has 17 positions"):
    Blip(c).apply({"params": p}, jnp.zeros((1, 48, 48, 3)), method=Blip.encode_image)


def test_image_index_equals_explicit_gather(batch):
  """Projecting cross-attention K/V once per image and gathering == pairing texts with gathered images."""
  images, ids, mask = batch
  c = tiny("pretrain")
  p = init_params(c, jax.random.key(0))
  m = Blip(c)
  img = jax.jit(lambda p, x: m.apply({"params": p}, x, method=Blip.encode_image))(p, images)
  index = jnp.asarray([1, 0, 1, 1])
  ids4, mask4 = jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask])
  gathered = m.apply({"params": p}, ids4, mask4, img[index], method=Blip.itm_logits)
  indexed = m.apply({"params": p}, ids4, mask4, img, method=Blip.itm_logits, image_index=index)
  np.testing.assert_allclose(indexed, gathered, atol=1e-5)
  dec_g = m.apply({"params": p}, ids4, mask4, img[index], method=Blip.decode)
  dec_i = m.apply({"params": p}, ids4, mask4, img, method=Blip.decode, image_index=index)
  np.testing.assert_allclose(dec_i, dec_g, atol=1e-5)
  # an int G: rows in groups of G per image (image-major), queries laid end to end, nothing gathered
  grouped = m.apply({"params": p}, ids4, mask4, img, method=Blip.itm_logits, image_index=2)
  np.testing.assert_allclose(
    grouped, m.apply({"params": p}, ids4, mask4, img[jnp.asarray([0, 0, 1, 1])], method=Blip.itm_logits), atol=1e-5
  )


def test_remat_of_the_last_vision_blocks_keeps_params_and_outputs():
  """Official vit_grad_ckpt / vit_ckpt_layer: only the last n blocks rematerialised; same tree, same
  forward, same gradients."""
  plain = tiny("retrieval")
  last = dataclasses.replace(plain, vision_remat="full", vision_remat_blocks=1)
  params = init_params(plain, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(init_params(last, jax.random.key(0)))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

  def loss(p, c):
    return (Blip(c).apply({"params": p}, images, method=Blip.encode_image) ** 2).mean()

  (l1, g1), (l2, g2) = jax.value_and_grad(loss)(params, plain), jax.value_and_grad(loss)(params, last)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))) < 1e-6
  with pytest.raises(ValueError, match="vision_remat_blocks=3"):
    dataclasses.replace(plain, vision_remat_blocks=3)

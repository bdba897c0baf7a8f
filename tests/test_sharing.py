"""Encoder / decoder parameter sharing. BLIP's setting: encoder and decoder share every tensor except
self-attention, inside one params tree. The other settings of paper Table 3 (`TextConfig.share`): which
tensors each mode reads, counts, decoding, momentum and interop refusal."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.generate import decoder
from blip_jax.interop import Checkpoint
from blip_jax.interop.state_dict import export_state_dict, import_state_dict
from blip_jax.models import Blip, BlipConfig, init_params, param_shapes, tiny, vit_b16
from blip_jax.models.config import SHARING
from blip_jax.models.momentum import momentum_view
from blip_jax.models.param_count import count


# ---- BLIP's setting (all but self-attention) ----------------------------------------------------
@pytest.fixture(scope="module")
def setup():
  c = tiny("pretrain")
  params = init_params(c, jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1000, 2000, (2, 7)))
  mask = jnp.ones((2, 7), jnp.int32)

  @jax.jit
  def outputs(p):
    m = Blip(c)
    img = m.apply({"params": p}, images, method=Blip.encode_image)
    return {
      "text": m.apply({"params": p}, ids, mask, method=Blip.encode_text),
      "multimodal": m.apply({"params": p}, ids, mask, img, method=Blip.encode_multimodal),
      "decoder": m.apply({"params": p}, ids, mask, img, method=Blip.decode),
    }

  return params, outputs, outputs(params)


def _perturb(params, path):
  def f(kp, x):
    keys = tuple(k.key for k in kp)
    return x + 0.5 if keys[: len(path)] == path else x

  return jax.tree_util.tree_map_with_path(f, params)


def _changed(a, b):
  return float(jnp.abs(a - b).max()) > 1e-4


def test_one_copy_of_shared_tensors(setup):
  params, _, _ = setup
  layer = params["text"]["layer_0"]
  assert set(layer) == {
    "attention",
    "decoder_attention",
    "crossattention",
    "intermediate",
    "output",
    "output_LayerNorm",
  }
  assert set(params["text"]) == {"embeddings", "cls", "layer_0", "layer_1"}


@pytest.mark.parametrize(
  "path", [("text", "layer_1", "crossattention"), ("text", "layer_0", "intermediate"), ("text", "embeddings")]
)
def test_perturbing_shared_tensor_changes_encoder_and_decoder(setup, path):
  params, outputs, base = setup
  out = outputs(_perturb(params, path))
  assert _changed(out["multimodal"], base["multimodal"])
  assert _changed(out["decoder"], base["decoder"])


def test_decoder_self_attention_is_the_decoders_own(setup):
  params, outputs, base = setup
  out = outputs(_perturb(params, ("text", "layer_0", "decoder_attention")))
  np.testing.assert_array_equal(out["text"], base["text"])
  np.testing.assert_array_equal(out["multimodal"], base["multimodal"])
  assert _changed(out["decoder"], base["decoder"])


def test_encoder_self_attention_does_not_touch_decoder(setup):
  params, outputs, base = setup
  out = outputs(_perturb(params, ("text", "layer_0", "attention")))
  np.testing.assert_array_equal(out["decoder"], base["decoder"])
  assert _changed(out["multimodal"], base["multimodal"])


# ---- every setting -------------------------------------------------------------------------------
def _config(share: str, task: str = "pretrain") -> BlipConfig:
  c = tiny(task)
  return c.replace(text=dataclasses.replace(c.text, share=share))


def _inputs(c: BlipConfig):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1000, 2000, (2, 6)))
  return images, ids, jnp.ones((2, 6), jnp.int32)


def _blocks_reached(c: BlipConfig, params, method, *args) -> set[str]:
  """Names of the text tower's blocks (per layer: attention, crossattention, FFN, ...) whose gradient
  of `method`'s output sum is non-zero."""
  g = jax.grad(lambda p: Blip(c).apply({"params": p}, *args, method=method).sum())(params)
  reached = set()
  for name, sub in g["text"].items():
    blocks = sub.items() if name.startswith("layer_") else [(name, sub)]
    for block, leaf in blocks:
      if any(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(leaf)):
        reached.add(block)
  return reached


# The decoder mode's blocks under each setting; the encoder modes always read the shared ones.
DECODER_BLOCKS = {
  "all_but_sa": {"embeddings", "decoder_attention", "crossattention", "intermediate", "output", "output_LayerNorm"},
  "all": {"embeddings", "attention", "crossattention", "intermediate", "output", "output_LayerNorm"},
  "all_but_ca": {"embeddings", "attention", "decoder_crossattention", "intermediate", "output", "output_LayerNorm"},
  "none": {
    "decoder_embeddings",
    "decoder_attention",
    "decoder_crossattention",
    "decoder_intermediate",
    "decoder_output",
    "decoder_output_LayerNorm",
  },
}
ENCODER_BLOCKS = {"embeddings", "attention", "crossattention", "intermediate", "output", "output_LayerNorm"}


# the fast suite checks BLIP's setting above and cached decoding of "none" below; the rest is slow
SLOW = pytest.mark.slow


@pytest.mark.parametrize("share", [pytest.param(s, marks=SLOW) for s in SHARING])
def test_each_mode_reads_exactly_its_blocks(share):
  c = _config(share)
  params = init_params(c, jax.random.key(0))
  images, ids, mask = _inputs(c)
  img = Blip(c).apply({"params": params}, images, method=Blip.encode_image)
  decoder_reach = _blocks_reached(c, params, Blip.decode, ids, mask, img)
  assert decoder_reach - {"cls"} == DECODER_BLOCKS[share]
  encoder_reach = _blocks_reached(c, params, Blip.encode_multimodal, ids, mask, img)
  assert encoder_reach == ENCODER_BLOCKS
  # the tree holds exactly what the three modes read: nothing unused, nothing missing
  layer = set(params["text"]["layer_0"])
  assert layer == (DECODER_BLOCKS[share] | ENCODER_BLOCKS) - {"embeddings", "decoder_embeddings"}
  # no momentum copy of the decoder's own blocks (the official momentum encoder is the text encoder)
  m = momentum_view(params)
  assert not any(k.startswith("decoder_") for k in m["text"]) and "cls" not in m["text"]
  assert not any(k.startswith("decoder_") for k in m["text"]["layer_0"])


def test_paper_table3_parameter_counts():
  counts = {
    s: count(
      param_shapes(BlipConfig(vision=vit_b16(224)).replace(text=dataclasses.replace(BlipConfig().text, share=s)))
    )
    for s in SHARING
  }
  # paper Table 3: 224M (all), 252M (all except CA, all except SA), 361M (none)
  assert {s: round(n / 1e6) for s, n in counts.items()} == {
    "all": 224,
    "all_but_ca": 252,
    "all_but_sa": 252,
    "none": 361,
  }


@pytest.mark.parametrize("share", [pytest.param("all", marks=SLOW), pytest.param("all_but_ca", marks=SLOW), "none"])
def test_cached_decoding_equals_full_forward(share):
  c = _config(share, "caption")
  params = init_params(c, jax.random.key(1))
  images, ids, mask = _inputs(c)
  ids = ids.at[:, 0].set(c.text.bos_token_id)
  img = Blip(c).apply({"params": params}, images, method=Blip.encode_image)
  full = Blip(c).apply({"params": params}, ids, mask, img, method=Blip.decode)
  cross = decoder.cross_kv(params["text"], c.text, img)
  cache = decoder.init_cache(c.text, 2, 8)
  steps = []
  for t in range(ids.shape[1]):
    logits, cache = decoder.step(params["text"], c.text, ids[:, t], jnp.int32(t), cache, cross)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), atol=1e-5, rtol=0)


def test_pytorch_formats_refuse_the_ablation_settings():
  c = _config("all")
  params = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  for fmt in ("salesforce", "hf"):
    with pytest.raises(ValueError, match="share='all'.*all_but_sa"):
      export_state_dict(Checkpoint(c.replace(task="pretrain"), params, None, None, []), fmt)
  with pytest.raises(ValueError, match="share='none'"):
    import_state_dict({}, "pretrain", "salesforce", _config("none"))
  with pytest.raises(ValueError, match="config.text.share"):
    _config("all", "vqa")
  with pytest.raises(ValueError, match="must be one of"):
    _config("encoder_only")

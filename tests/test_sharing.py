"""Encoder and decoder share every tensor except self-attention, inside one params tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.models import Blip, init_params, tiny


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

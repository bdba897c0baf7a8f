"""Generation: token ids equal transformers' `generate` on the same imported weights (greedy and beam
search, with and without the prompt, repetition penalty 1.0 / 1.1); cached decoding equals the full
forward; nucleus sampling stays inside the top-p set, is reproducible and varies with the rng."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from blip_jax.generate import decoder
from blip_jax.generate.search import generate, nucleus_filter
from blip_jax.interop import import_state_dict
from blip_jax.models import Blip
from tests import hf_reference as ref

PROMPT = [1037, 3861, 1997]  # "a picture of"
EOS = 102


@pytest.fixture(scope="module")
def caption():
  c = ref.our_config("caption")
  model = ref.hf_model("BlipForConditionalGeneration", c, seed=1)
  with torch.no_grad():  # sharper logits, and [SEP] competitive, so hypotheses differ per image and
    # end at different lengths (random BLIP weights otherwise give near-uniform next-token logits)
    model.text_decoder.bert.embeddings.word_embeddings.weight.mul_(6.0)
    model.text_decoder.cls.predictions.bias[EOS] += 5.5
    for name, p in model.text_decoder.named_parameters():  # stronger image dependence
      if "crossattention.self.value.weight" in name or "crossattention.output.dense.weight" in name:
        p.mul_(4.0)
  ckpt = import_state_dict(ref.state_dict_numpy(model), "caption", "hf", config=c)
  images, _, _ = ref.inputs(c, batch=4, seed=3)
  img = Blip(c).apply({"params": ckpt.params}, jnp.asarray(images), method=Blip.encode_image)
  return c, model, ckpt, images, img


def _hf(model, images, prompt, **kw):
  ids = None
  if prompt:
    ids = torch.tensor([[101] + prompt + [EOS]] * len(images))
  with torch.no_grad():
    return model.generate(pixel_values=ref.nchw(images), input_ids=ids, do_sample=False, **kw).numpy()


@pytest.mark.parametrize("prompt", [[], PROMPT], ids=["no-prompt", "prompt"])
@pytest.mark.parametrize("penalty", [1.0, 1.1])
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_token_ids_equal_transformers_generate(caption, prompt, penalty, method):
  c, model, ckpt, images, img = caption
  kw = dict(max_length=20, min_length=5, repetition_penalty=penalty)
  if method == "beam":
    kw["num_beams"] = 3
  want = _hf(model, images, prompt, **kw)
  opts = dict(max_length=20, min_length=5, repetition_penalty=penalty)
  if method == "beam":
    opts["num_beams"] = 3
  ids, lengths = generate(
    ckpt.params, c.text, img, jnp.asarray(prompt, jnp.int32), method=method, options=tuple(sorted(opts.items()))
  )
  ids, lengths = np.asarray(ids), np.asarray(lengths)
  np.testing.assert_array_equal(ids[:, : want.shape[1]], want)
  assert lengths.max() == want.shape[1]
  assert len({tuple(r) for r in want}) > 1  # not one caption for every image
  assert all(n >= 5 for n in lengths)  # min_length counts [DEC] and the prompt
  assert lengths.min() < 20 and any(row[n - 1] == EOS for row, n in zip(ids, lengths))  # [SEP] stops


def test_some_hypotheses_stop_on_sep_before_max_length(caption):
  c, _, ckpt, _, img = caption
  ids, lengths = generate(
    ckpt.params,
    c.text,
    img,
    jnp.asarray([], jnp.int32),
    method="beam",
    options=(("max_length", 20), ("min_length", 5), ("num_beams", 3)),
  )
  assert (np.asarray(lengths) < 20).any()
  for row, n in zip(np.asarray(ids), np.asarray(lengths)):
    if n < 20:
      assert row[n - 1] == EOS and (row[n:] == EOS).all()


def test_cached_decoding_equals_full_forward(caption):
  c, _, ckpt, _, img = caption
  ids = np.asarray(ref.inputs(c, batch=4, length=12, seed=5)[1])
  ids[:, 0] = c.text.bos_token_id
  full = Blip(c).apply(
    {"params": ckpt.params}, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), img, method=Blip.decode
  )
  cross = decoder.cross_kv(ckpt.params["text"], c.text, img)
  cache = decoder.init_cache(c.text, 4, 16)
  steps = []
  for t in range(ids.shape[1]):
    logits, cache = decoder.step(ckpt.params["text"], c.text, jnp.asarray(ids[:, t]), jnp.int32(t), cache, cross)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), atol=1e-5, rtol=0)


def test_nucleus_filter_keeps_exactly_the_top_p_set():
  probs = np.array([[0.5, 0.3, 0.1, 0.06, 0.04], [0.05, 0.05, 0.8, 0.05, 0.05]], np.float32)
  kept = np.isfinite(np.asarray(nucleus_filter(jnp.log(probs), 0.9, 0, 1.0)))
  # smallest set with mass >= 0.9: {0.5, 0.3, 0.1} and {0.8, one 0.05 ... } -> 0.8 + 0.05 + 0.05
  np.testing.assert_array_equal(kept[0], [True, True, True, False, False])
  assert kept[1, 2] and kept[1].sum() == 3
  kept_k = np.isfinite(np.asarray(nucleus_filter(jnp.log(probs), 1.0, 2, 1.0)))
  np.testing.assert_array_equal(kept_k[0], [True, True, False, False, False])


def test_sampling_never_leaves_the_nucleus_and_is_reproducible(caption):
  c, _, ckpt, _, img = caption
  opts = (("max_length", 12), ("min_length", 3), ("num_samples", 4), ("top_k", 0), ("top_p", 0.9))
  a, la = generate(
    ckpt.params, c.text, img, jnp.asarray(PROMPT, jnp.int32), jax.random.key(0), method="sample", options=opts
  )
  b, _ = generate(
    ckpt.params, c.text, img, jnp.asarray(PROMPT, jnp.int32), jax.random.key(0), method="sample", options=opts
  )
  d, _ = generate(
    ckpt.params, c.text, img, jnp.asarray(PROMPT, jnp.int32), jax.random.key(1), method="sample", options=opts
  )
  a, la = np.asarray(a), np.asarray(la)
  np.testing.assert_array_equal(a, np.asarray(b))
  assert not np.array_equal(a, np.asarray(d))
  assert a.shape == (16, 12)
  # replay every sampled token through the model: it must lie in the top-p set of its step
  rows = jnp.repeat(img, 4, axis=0)
  full = np.asarray(
    Blip(c).apply({"params": ckpt.params}, jnp.asarray(a), jnp.ones(a.shape, jnp.int32), rows, method=Blip.decode)
  )
  p_len = 1 + len(PROMPT)
  for r in range(a.shape[0]):
    for t in range(p_len, la[r]):
      logits = full[r, t - 1].copy()
      if t < 3:
        logits[EOS] = -np.inf
      kept = np.isfinite(np.asarray(nucleus_filter(jnp.asarray(logits)[None], 0.9, 0, 1.0)))[0]
      assert kept[a[r, t]], (r, t)

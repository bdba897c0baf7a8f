"""Float32 parity with transformers' PyTorch BLIP on imported random weights (max abs diff <= 1e-5)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from blip_jax.interop import import_state_dict
from blip_jax.losses import lm_loss
from blip_jax.models import Blip
from tests import hf_reference as ref

TOL = 1e-5


def _apply(ckpt, method, *args, **kw):
  return np.asarray(Blip(ckpt.config).apply({"params": ckpt.params}, *args, method=method, **kw))


def _with_first(ids, token):
  ids = ids.copy()
  ids[:, 0] = token
  return ids


def _close(ours, theirs, tol=TOL):
  theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
  assert ours.shape == theirs.shape
  err = float(np.abs(ours - theirs).max())
  print(f"max abs diff {err:.3g} (reference magnitude {float(np.abs(theirs).max()):.3g})")
  assert err <= tol, f"max abs diff {err:.3g} > {tol}"
  return err


def _imported(cls_name, task, **sizes):
  """(our config, random transformers model, its weights imported into blip_jax)."""
  c = ref.our_config(task, **sizes)
  model = ref.hf_model(cls_name, c)
  return c, model, import_state_dict(ref.state_dict_numpy(model), task, "hf", config=c)


@pytest.fixture(scope="module")
def caption():
  return _imported("BlipForConditionalGeneration", "caption")


@pytest.fixture(scope="module")
def retrieval():
  return _imported("BlipForImageTextRetrieval", "itm")


def test_caption_vision_decoder_logits_and_lm_loss(caption):
  c, model, ckpt = caption
  images, ids, mask = ref.inputs(c)
  dec_ids = _with_first(ids, 30522)
  with torch.no_grad():
    labels = torch.from_numpy(dec_ids).masked_fill(torch.from_numpy(mask) == 0, -100)
    out = model(
      pixel_values=ref.nchw(images),
      input_ids=torch.from_numpy(dec_ids),
      attention_mask=torch.from_numpy(mask),
      labels=labels,
    )
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  _close(img, out.last_hidden_state)
  logits = _apply(ckpt, Blip.decode, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
  _close(logits, out.logits)
  loss = float(lm_loss(jnp.asarray(logits), jnp.asarray(dec_ids), jnp.asarray(mask), 0.1))
  assert abs(loss - out.loss.item()) <= TOL


def test_retrieval_itm_logits_and_itc_cosines(retrieval):
  c, model, ckpt = retrieval
  images, ids, mask = ref.inputs(c, batch=4)
  with torch.no_grad():
    itm = model(
      input_ids=torch.from_numpy(_with_first(ids, 30523)),
      pixel_values=ref.nchw(images),
      attention_mask=torch.from_numpy(mask),
      use_itm_head=True,
    )
    itc = model(
      input_ids=torch.from_numpy(ids),
      pixel_values=ref.nchw(images),
      attention_mask=torch.from_numpy(mask),
      use_itm_head=False,
    )
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  _close(img, itm.last_hidden_state)
  logits = _apply(ckpt, Blip.itm_logits, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
  _close(logits, itm.itm_score)
  txt = _apply(ckpt, Blip.encode_text, jnp.asarray(ids), jnp.asarray(mask))
  i_feat = _apply(ckpt, Blip.image_feature, jnp.asarray(img))
  t_feat = _apply(ckpt, Blip.text_feature, jnp.asarray(txt))
  # HF returns image_feat @ text_feat.T for the (image b, text b) pairs it was given.
  _close(i_feat @ t_feat.T, itc.itm_score)


@pytest.fixture(scope="module")
def vqa():
  # transformers' VQA answer decoder takes K/V of the vision width: use equal widths so it runs.
  return _imported("BlipForQuestionAnswering", "vqa", vision_width=32, text_width=32, vision_mlp=64)


def test_vqa_question_encoder_and_answer_decoder(vqa):
  """Questions unpadded here: transformers (4.57 and 5.x) drops `encoder_attention_mask` in
  BlipTextAttention.forward, so its answer decoder attends to padded question tokens, unlike the
  official BLIP. test_vqa_answer_decoder_masks_question_padding covers the padded case."""
  c, model, ckpt = vqa
  images, q_ids, _ = ref.inputs(c, seed=1)
  q_mask = np.ones_like(q_ids)
  _, a_ids, a_mask = ref.inputs(c, length=5, seed=2)
  q_ids, a_ids = _with_first(q_ids, 30523), _with_first(a_ids, 30522)
  with torch.no_grad():
    img_t = model.vision_model(pixel_values=ref.nchw(images)).last_hidden_state
    q_t = model.text_encoder(
      input_ids=torch.from_numpy(q_ids),
      attention_mask=torch.from_numpy(q_mask),
      encoder_hidden_states=img_t,
      encoder_attention_mask=torch.ones(img_t.shape[:2], dtype=torch.long),
    ).last_hidden_state
    labels = torch.from_numpy(a_ids).masked_fill(torch.from_numpy(a_mask) == 0, -100)
    ans = model.text_decoder(
      input_ids=torch.from_numpy(a_ids),
      attention_mask=torch.from_numpy(a_mask),
      encoder_hidden_states=q_t,
      encoder_attention_mask=torch.from_numpy(q_mask),
      labels=labels,
      reduction="mean",
    )
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  _close(img, img_t)
  q = _apply(ckpt, Blip.encode_multimodal, jnp.asarray(q_ids), jnp.asarray(q_mask), jnp.asarray(img))
  _close(q, q_t)
  logits = _apply(
    ckpt, Blip.answer_logits, jnp.asarray(a_ids), jnp.asarray(a_mask), jnp.asarray(q), jnp.asarray(q_mask)
  )
  _close(logits, ans.logits)
  loss = float(lm_loss(jnp.asarray(logits), jnp.asarray(a_ids), jnp.asarray(a_mask), 0.1))
  assert abs(loss - ans.loss.item()) <= TOL


def test_vqa_answer_decoder_masks_question_padding(vqa):
  """Official BLIP passes question_atts to the answer decoder's cross-attention: padded question
  states must not influence the answer logits, real ones must."""
  c, _, ckpt = vqa
  images, q_ids, q_mask = ref.inputs(c, seed=1)
  _, a_ids, a_mask = ref.inputs(c, length=5, seed=2)
  assert (q_mask == 0).any()
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  q = _apply(ckpt, Blip.encode_multimodal, jnp.asarray(q_ids), jnp.asarray(q_mask), jnp.asarray(img))
  run = lambda states: _apply(
    ckpt, Blip.answer_logits, jnp.asarray(a_ids), jnp.asarray(a_mask), jnp.asarray(states), jnp.asarray(q_mask)
  )
  base = run(q)
  np.testing.assert_array_equal(run(np.where(q_mask[..., None] == 0, q + 100.0, q)), base)
  assert np.abs(run(np.where(q_mask[..., None] == 1, q + 1.0, q)) - base).max() > 1e-3


def test_label_smoothing_is_configurable(caption):
  c, model, ckpt = caption
  images, ids, mask = ref.inputs(c)
  dec_ids = _with_first(ids, 30522)
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  logits = _apply(ckpt, Blip.decode, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
  labels = torch.from_numpy(dec_ids).masked_fill(torch.from_numpy(mask) == 0, -100)
  for eps in (0.0, 0.3):
    want = torch.nn.functional.cross_entropy(
      torch.from_numpy(np.array(logits[:, :-1])).reshape(-1, logits.shape[-1]),
      labels[:, 1:].reshape(-1),
      label_smoothing=eps,
    )
    got = float(lm_loss(jnp.asarray(logits), jnp.asarray(dec_ids), jnp.asarray(mask), eps))
    assert abs(got - want.item()) <= TOL


@pytest.mark.slow
def test_full_size_vit_b_bert_base_caption_parity():
  """ViT-B/16 + BERT-base at 224 px (transformers' sizes), float32, <= 1e-4."""
  c, model, ckpt = _imported(
    "BlipForConditionalGeneration",
    "caption",
    vision_width=768,
    text_width=768,
    image_size=224,
    patch=16,
    layers=12,
    heads=12,
    vision_layers=12,
    vision_heads=12,
    text_mlp=3072,
    vision_mlp=3072,
    embed_dim=256,
  )
  images, ids, mask = ref.inputs(c, batch=2, length=12)
  dec_ids = _with_first(ids, 30522)
  with torch.no_grad():
    out = model(
      pixel_values=ref.nchw(images), input_ids=torch.from_numpy(dec_ids), attention_mask=torch.from_numpy(mask)
    )
  img = _apply(ckpt, Blip.encode_image, jnp.asarray(images))
  _close(img, out.last_hidden_state, 1e-4)
  logits = _apply(ckpt, Blip.decode, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
  _close(logits, out.logits, 1e-4)

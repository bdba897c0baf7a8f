"""The BLIP model for every task, and its small functional API.

Parameter tree (top level; which entries exist depends on `config.task`, see config.TASKS):
  visual_encoder   ViT                                  (all tasks)
  text             MED: shared encoder/decoder tower     (all tasks; VQA: the question encoder)
  answer_decoder   MED decoder over question states      (vqa)
  vision_proj, text_proj                                (pretrain, retrieval, itm)
  itm_head                                              (pretrain, retrieval, itm)
  temp             ITC temperature, clamped on every use (pretrain, retrieval)
  cls_head_0, cls_head_2   NLVR2 head: Linear(D, D), ReLU, Linear(D, 2) on [ENC]   (nlvr)

Methods (use with `model.apply({"params": params}, ..., method=Blip.<name>)`, or the helpers at the
bottom of this file). Images are NHWC, normalised; token ids (B, L) int32 with a (B, L) 1/0 mask.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models import layers
from blip_jax.models.config import BlipConfig
from blip_jax.models.med import MED
from blip_jax.models.vit import VisionTransformer


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch.nn.functional.normalize semantics: x / max(||x||, eps)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def with_first_token(ids: jax.Array, token_id: int) -> jax.Array:
  """Overwrite position 0 with [ENC] / [DEC] (the tokenizer emits [CLS] there)."""
  return ids.at[:, 0].set(token_id)


class Blip(nn.Module):
  config: BlipConfig

  def setup(self):
    c = self.config
    comps = c.components
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    self.visual_encoder = VisionTransformer(c.vision, remat=c.vision_remat, remat_blocks=c.vision_remat_blocks, **kw)
    self.text = MED(c.text, remat=c.text_remat, **kw)
    if "answer_decoder" in comps:
      self.answer_decoder = MED(c.text, remat=c.text_remat, **kw)
    if "proj" in comps:
      self.vision_proj = layers.dense(c.embed_dim, ("embed", "proj"), name=None, **kw)
      self.text_proj = layers.dense(c.embed_dim, ("embed", "proj"), name=None, **kw)
    if "itm" in comps:
      self.itm_head = layers.dense(2, ("embed", "classes"), name=None, **kw)
    if "cls_head" in comps:  # official nn.Sequential(Linear, ReLU, Linear): indices 0 and 2
      self.cls_head_0 = layers.dense(c.text.hidden_size, ("embed", "mlp"), name=None, **kw)
      self.cls_head_2 = layers.dense(2, ("mlp", "classes"), name=None, **kw)
    # setup() params are created eagerly: declare temp only where it exists, so sub-trees without it
    # (the momentum copies) apply without a stand-in.
    if "temp" in comps and (self.is_initializing() or self.has_variable("params", "temp")):
      self.temp = self.param(
        "temp", nn.with_logical_partitioning(nn.initializers.constant(c.temp_init), ()), (), jnp.dtype(c.param_dtype)
      )

  # ---- towers -------------------------------------------------------------------------------
  def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
    """(B, H, W, 3) -> (B, 1+N, Dv) image tokens after the final LayerNorm."""
    return self.visual_encoder(images, train=train)

  def encode_text(self, ids: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    """Unimodal text encoder ([CLS] first, as given): (B, L) -> (B, L, D)."""
    return self.text(ids, mask, mode="text", train=train)

  def encode_multimodal(
    self, ids, mask, image_embeds, image_mask=None, train: bool = False, image_index=None, first_token=None
  ):
    """Image-grounded text encoder: first token forced to [ENC] (or `first_token`). -> (B, L, D).

    image_index (B,), optional: text b attends to image image_index[b] of image_embeds (Bi, 1+N, Dv);
    or an int G: B == Bi * G, texts b*G .. b*G+G-1 attend to image b (nothing gathered; MED.__call__).
    first_token: the id at position 0, default [ENC] (BLIP training and retrieval); the official
    blip_itm demo model and transformers' BlipForImageTextRetrieval keep [CLS].
    """
    ids = with_first_token(ids, self.config.text.enc_token_id if first_token is None else first_token)
    return self.text(
      ids,
      mask,
      mode="multimodal",
      encoder_states=image_embeds,
      encoder_mask=image_mask,
      encoder_index=image_index,
      train=train,
    )

  def decode(self, ids, mask, image_embeds, image_mask=None, train: bool = False, image_index=None):
    """Image-grounded decoder: first token forced to [DEC]. -> (B, L, V) float32 logits."""
    ids = with_first_token(ids, self.config.text.bos_token_id)
    h = self.text(
      ids,
      mask,
      mode="decoder",
      encoder_states=image_embeds,
      encoder_mask=image_mask,
      encoder_index=image_index,
      train=train,
    )
    return self.text.logits(h)

  # ---- heads --------------------------------------------------------------------------------
  def image_feature(self, image_embeds: jax.Array) -> jax.Array:
    """(B, 1+N, Dv) -> (B, E) L2-normalised ITC image feature (from the CLS token)."""
    return l2_normalize(self.vision_proj(image_embeds[:, 0]))

  def text_feature(self, text_embeds: jax.Array) -> jax.Array:
    """(B, L, D) unimodal states -> (B, E) L2-normalised ITC text feature (from [CLS])."""
    return l2_normalize(self.text_proj(text_embeds[:, 0]))

  def itm_logits(
    self, ids, mask, image_embeds, image_mask=None, train: bool = False, image_index=None, first_token=None
  ):
    """(B, L) text and (B, 1+N, Dv) image tokens -> (B, 2) logits [no match, match].

    With image_index (B,), text b is paired with image image_index[b]; first_token: see
    encode_multimodal."""
    h = self.encode_multimodal(ids, mask, image_embeds, image_mask, train, image_index, first_token)
    return self.itm_head(h[:, 0]).astype(jnp.float32)

  def clamped_temp(self) -> jax.Array:
    """ITC temperature clamped to [temp_min, temp_max] (BLIP clamps before every forward)."""
    return jnp.clip(self.temp, self.config.temp_min, self.config.temp_max)

  # ---- NLVR2 --------------------------------------------------------------------------------
  def nlvr_logits(self, ids, mask, image_embeds0, image_embeds1, train: bool = False):
    """(B, L) statements over two images' tokens (B, 1+N, Dv) each -> (B, 2) logits [false, true]."""
    ids = with_first_token(ids, self.config.text.enc_token_id)
    h = self.text(ids, mask, mode="multimodal", encoder_states=(image_embeds0, image_embeds1), train=train)
    return self.cls_head_2(nn.relu(self.cls_head_0(h[:, 0]))).astype(jnp.float32)

  # ---- VQA ----------------------------------------------------------------------------------
  def answer_logits(self, answer_ids, answer_mask, question_states, question_mask, train=False):
    """VQA answer decoder ([DEC] first) over question-encoder states -> (B, La, V) logits."""
    ids = with_first_token(answer_ids, self.config.text.bos_token_id)
    h = self.answer_decoder(
      ids, answer_mask, mode="decoder", encoder_states=question_states, encoder_mask=question_mask, train=train
    )
    return self.answer_decoder.logits(h)

  # ---- every output at once (what `init` runs, so it creates every parameter) -----------------
  def __call__(self, images, ids, mask, answer_ids=None, answer_mask=None, train: bool = False):
    """Every output the task's model has for one batch: images (B, S, S, 3), ids / mask (B, L) (the
    caption, or the VQA question), answer_ids / answer_mask (B, La) (VQA; needed by a VQA model).
    Returns a dict: image_embeds, multimodal, text_embeds, image_feat, text_feat, itm_logits, temp,
    logits, answer_logits, as the task has them. NLVR2: images (B, 2, S, S, 3) -> image_embeds, nlvr_logits."""
    comps = self.config.components
    if "cls_head" in comps:
      b = images.shape[0]
      img = self.encode_image(images.reshape((2 * b,) + images.shape[2:]), train)
      pair = img.reshape((b, 2) + img.shape[1:])
      return {"image_embeds": img, "nlvr_logits": self.nlvr_logits(ids, mask, pair[:, 0], pair[:, 1], train)}
    img = self.encode_image(images, train)
    out = {"image_embeds": img}
    if "text_encoder_sa" in comps:
      out["multimodal"] = self.encode_multimodal(ids, mask, img, train=train)
      if "proj" in comps:
        out["text_embeds"] = self.encode_text(ids, mask, train)
        out["image_feat"] = self.image_feature(img)
        out["text_feat"] = self.text_feature(out["text_embeds"])
      if "itm" in comps:
        out["itm_logits"] = self.itm_head(out["multimodal"][:, 0])
      if "temp" in comps:
        out["temp"] = self.clamped_temp()
    if "text_decoder_sa" in comps:
      out["logits"] = self.decode(ids, mask, img, train=train)
    if "answer_decoder" in comps:
      if answer_ids is None:
        raise ValueError("a VQA model needs answer_ids and answer_mask")
      out["answer_logits"] = self.answer_logits(answer_ids, answer_mask, out["multimodal"], mask, train)
    return out


def init_params(config: BlipConfig, rng: jax.Array, batch: int = 1, text_len: int = 8):
  """Random parameters (a plain nested dict of float arrays) for `config`.

  The logical-axis boxes are stripped; `param_logical_axes(config)` gives the matching axis names.
  """
  model = Blip(config)
  variables = model.init({"params": rng, "dropout": rng}, *_dummy_inputs(config, batch, text_len))
  return nn.meta.unbox(variables["params"])


def boxed_param_shapes(config: BlipConfig, batch: int = 1, text_len: int = 8):
  """Abstract params still wrapped in their LogicallyPartitioned boxes (no allocation).

  Feed it to an optimizer's init under eval_shape to get boxed optimizer state too."""
  return jax.eval_shape(
    lambda r: Blip(config).init({"params": r, "dropout": r}, *_dummy_inputs(config, batch, text_len))["params"],
    jax.random.key(0),
  )


def param_logical_axes(config: BlipConfig, batch: int = 1, text_len: int = 8):
  """Pytree of jax.sharding.PartitionSpec of *logical* axis names, matching init_params."""
  return nn.get_partition_spec(boxed_param_shapes(config, batch, text_len))


def param_shapes(config: BlipConfig):
  """Pytree of jax.ShapeDtypeStruct of the parameters, without allocating them."""
  return jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))


def _dummy_inputs(config: BlipConfig, batch: int, text_len: int):
  s = config.vision.image_size
  images = jnp.zeros((batch, 2, s, s, 3) if "cls_head" in config.components else (batch, s, s, 3), jnp.float32)
  ids = jnp.full((batch, text_len), config.text.cls_token_id, jnp.int32)
  mask = jnp.ones((batch, text_len), jnp.int32)
  if "answer_decoder" in config.components:
    return images, ids, mask, ids, mask
  return images, ids, mask

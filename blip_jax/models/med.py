"""MED: the BLIP text transformer (post-LN BERT), reference section 3.

One module serves the three modes. Encoder and decoder live in ONE parameter tree and share every
tensor except self-attention ("all except SA", paper Table 3). Names mirror the official BERT:

  embeddings/{word_embeddings, position_embeddings, LayerNorm}          shared
  layer_{i}/attention/{self/{query,key,value}, output/{dense,LayerNorm}}  encoder self-attention
  layer_{i}/decoder_attention/...                                        decoder (causal) self-attention
  layer_{i}/crossattention/{self/..., output/...}                        shared
  layer_{i}/{intermediate, output, output_LayerNorm}                     shared FFN
  cls/{transform_dense, transform_LayerNorm, bias}                       decoder LM head; its logits use
                                                                         the tied word embeddings
(`blip_jax.interop.keymap` spells out the few places where the PyTorch key differs.)
Modes:
  "text"        unimodal encoder: bidirectional self-attention, no cross-attention ([CLS] first)
  "multimodal"  image-grounded encoder: + cross-attention to encoder states ([ENC] first)
  "decoder"     image-grounded decoder: causal self-attention + cross-attention ([DEC] first)

Cross-attention infers its K/V input width from the states it is given (vision width for images, text
width for the VQA answer decoder). With `num_cross_branches=2` (NLVR2) each layer has branches
`self0`/`self1` over two images with output denses `dense0`/`dense1`, averaged below
`cross_merge_from_layer` and merged by `merge_layer` (2D -> D) from it on, then the shared LayerNorm.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from blip_jax.models import layers
from blip_jax.models.config import TextConfig

MODES = ("text", "multimodal", "decoder")


class SelfOrCross(nn.Module):
  """BERT `*.self`: query/key/value projections and attention -> context (B, Lq, D)."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  cross: bool = False

  @nn.compact
  def __call__(self, x, kv, bias, deterministic, kv_index=None):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    kv_axis = "kv_embed" if self.cross else "embed"
    q = layers.dense(c.hidden_size, ("embed", "heads"), name="query", **kw)(x)
    k = layers.dense(c.hidden_size, (kv_axis, "heads"), name="key", **kw)(kv)
    v = layers.dense(c.hidden_size, (kv_axis, "heads"), name="value", **kw)(kv)
    if kv_index is not None:  # K/V projected once per unique encoder row, then gathered per text row
      k, v = k[kv_index], v[kv_index]
    sh = lambda t: layers.split_heads(t, c.num_heads)
    ctx = layers.attention(sh(q), sh(k), sh(v), bias, dropout_rate=c.attention_dropout,
                           deterministic=deterministic, module=self)
    return layers.merge_heads(ctx)


class AttentionOutput(nn.Module):
  """BERT `*.output`: dense(s) -> dropout -> residual -> LayerNorm. Several inputs = NLVR2 branches."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  merge: bool = False

  @nn.compact
  def __call__(self, ctxs, residual, deterministic):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if len(ctxs) == 1:
      y = layers.dense(c.hidden_size, ("heads", "embed"), name="dense", **kw)(ctxs[0])
    else:
      ys = [layers.dense(c.hidden_size, ("heads", "embed"), name=f"dense{j}", **kw)(t)
            for j, t in enumerate(ctxs)]
      if self.merge:
        y = layers.dense(c.hidden_size, ("mlp", "embed"), name="merge_layer", **kw)(
            jnp.concatenate(ys, axis=-1))
      else:
        y = sum(ys) / len(ys)
    y = nn.Dropout(c.hidden_dropout)(y, deterministic=deterministic)
    return layers.layer_norm(c.layer_norm_eps, name="LayerNorm", **kw)(y + residual)


class Attention(nn.Module):
  """Self-attention (kv=None) or cross-attention over one or several encoder state tensors."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  merge: bool = False

  @nn.compact
  def __call__(self, x, bias, kvs=None, kv_biases=None, deterministic=True, kv_index=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if kvs is None:
      ctxs = [SelfOrCross(self.cfg, name="self", **kw)(x, x, bias, deterministic)]
    elif len(kvs) == 1:
      ctxs = [SelfOrCross(self.cfg, cross=True, name="self", **kw)(x, kvs[0], kv_biases[0], deterministic,
                                                                  kv_index)]
    else:
      ctxs = [SelfOrCross(self.cfg, cross=True, name=f"self{j}", **kw)(x, kv, kb, deterministic, kv_index)
              for j, (kv, kb) in enumerate(zip(kvs, kv_biases))]
    return AttentionOutput(self.cfg, merge=self.merge, name="output", **kw)(ctxs, x, deterministic)


class Layer(nn.Module):
  """One MED layer: self-attention (encoder or decoder copy) -> optional cross-attention -> FFN."""
  cfg: TextConfig
  layer_index: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, self_bias, kvs, kv_biases, kv_index, mode: str, deterministic: bool):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    sa_name = "decoder_attention" if mode == "decoder" else "attention"
    x = Attention(c, name=sa_name, **kw)(x, self_bias, deterministic=deterministic)
    if mode != "text":
      merge = c.num_cross_branches > 1 and self.layer_index >= c.cross_merge_from_layer
      x = Attention(c, merge=merge, name="crossattention", **kw)(x, None, kvs, kv_biases, deterministic,
                                                                 kv_index)
    h = layers.dense(c.intermediate_size, ("embed", "mlp"), name="intermediate", **kw)(x)
    h = layers.gelu(h)
    h = layers.dense(c.hidden_size, ("mlp", "embed"), name="output", **kw)(h)
    h = nn.Dropout(c.hidden_dropout)(h, deterministic=deterministic)
    x = layers.layer_norm(c.layer_norm_eps, name="output_LayerNorm", **kw)(h + x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embeddings(nn.Module):
  cfg: TextConfig
  dtype: Any
  param_dtype: Any

  def setup(self):
    c = self.cfg
    init = nn.with_logical_partitioning(layers.BERT_INIT, ("vocab", "embed"))
    self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                                    dtype=self.dtype, param_dtype=self.param_dtype)
    self.position_embeddings = nn.Embed(
        c.max_position_embeddings, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(layers.BERT_INIT, ("positions", "embed")))
    self.LayerNorm = layers.layer_norm(c.layer_norm_eps, name=None, dtype=self.dtype,
                                       param_dtype=self.param_dtype)
    self.dropout = nn.Dropout(c.hidden_dropout)

  def __call__(self, ids, positions, deterministic):
    x = self.word_embeddings(ids) + self.position_embeddings(positions)
    return self.dropout(self.LayerNorm(x), deterministic=deterministic)

  def attend(self, h):
    """(..., D) -> (..., V) logits against the word-embedding matrix (the tied LM decoder)."""
    return self.word_embeddings.attend(h)


class LMHead(nn.Module):
  """`cls.predictions`: transform (dense, GELU, LayerNorm) then tied decoder + own bias."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, h, embeddings: Embeddings):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(c.hidden_size, ("embed", "embed_out"), name="transform_dense", **kw)(h)
    h = layers.gelu(h)
    h = layers.layer_norm(c.layer_norm_eps, name="transform_LayerNorm", **kw)(h)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                      (c.vocab_size,), self.param_dtype)
    return embeddings.attend(h) + bias.astype(self.dtype)


class MED(nn.Module):
  """The text transformer. Call `__call__` for hidden states, `logits` for decoder-mode LM logits."""
  cfg: TextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = Embeddings(self.cfg, **kw)
    # static: mode (6) and deterministic (7), counting self as 0.
    layer_cls = layers.maybe_remat(Layer, self.remat, static_argnums=(6, 7))
    self.layer = [layer_cls(self.cfg, i, **kw) for i in range(self.cfg.num_layers)]
    self.cls = LMHead(self.cfg, **kw)

  def __call__(self, ids: jax.Array, mask: jax.Array, *, mode: str = "text",
               encoder_states: jax.Array | tuple[jax.Array, ...] | None = None,
               encoder_mask: jax.Array | tuple[jax.Array, ...] | None = None,
               encoder_index: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Hidden states of the last layer.

    Args:
      ids: (B, L) int token ids, first token already [CLS]/[ENC]/[DEC] as the mode needs.
      mask: (B, L) 1 for real tokens, 0 for padding.
      mode: one of MODES.
      encoder_states: (B, Lk, Dk) states to cross-attend to (a tuple of them for NLVR2).
      encoder_mask: (B, Lk) 1/0 (tuple for NLVR2); None = attend to all.
      encoder_index: (B,) int, optional: text row b attends to encoder row encoder_index[b] of
        encoder_states (Be, Lk, Dk). Cross-attention K/V are then projected once per encoder row and
        gathered, so several texts per image (ITM negatives) cost one projection per image.
    Returns:
      (B, L, D) in the compute dtype.
    """
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    if ids.shape[1] > self.cfg.max_position_embeddings:
      raise ValueError(f"text length {ids.shape[1]} exceeds max_position_embeddings "
                       f"{self.cfg.max_position_embeddings}")
    deterministic = not train
    positions = jnp.arange(ids.shape[1])[None, :]
    x = self.embeddings(ids, positions, deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self_bias = layers.causal_padding_bias(mask) if mode == "decoder" else layers.padding_bias(mask)
    kvs = kv_biases = None
    if mode != "text":
      if encoder_states is None:
        raise ValueError(f"mode={mode!r} needs encoder_states")
      kvs = tuple(encoder_states) if isinstance(encoder_states, (tuple, list)) else (encoder_states,)
      if len(kvs) != self.cfg.num_cross_branches:
        raise ValueError(f"{len(kvs)} encoder state tensors for num_cross_branches="
                         f"{self.cfg.num_cross_branches}")
      if encoder_mask is None:
        masks = tuple(jnp.ones(s.shape[:2], jnp.int32) for s in kvs)
      else:
        masks = tuple(encoder_mask) if isinstance(encoder_mask, (tuple, list)) else (encoder_mask,)
      if encoder_index is not None:
        masks = tuple(m[encoder_index] for m in masks)
      kv_biases = tuple(layers.padding_bias(m) for m in masks)
      kvs = tuple(s.astype(self.dtype) for s in kvs)
    for layer in self.layer:
      x = layer(x, self_bias, kvs, kv_biases, encoder_index, mode, deterministic)
    return x

  def logits(self, hidden: jax.Array) -> jax.Array:
    """(B, L, D) decoder states -> (B, L, V) float32 logits (tied word embeddings + bias)."""
    return self.cls(hidden, self.embeddings).astype(jnp.float32)

"""MED: the BLIP text transformer (post-LN BERT), reference section 3.

One module serves the three modes. Encoder and decoder live in ONE parameter tree and share every
tensor except self-attention ("all except SA", paper Table 3; `TextConfig.share` picks the others of
that table: "all", "all_but_ca" (the decoder's own `decoder_crossattention`), "none" (its own
`decoder_embeddings` and `decoder_*` blocks in every layer)). Names mirror the official BERT:

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

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models import layers
from blip_jax.models.config import TextConfig

MODES = ("text", "multimodal", "decoder")


class SelfOrCross(nn.Module):
  """BERT `*.self`: query/key/value projections and attention -> context (B, Lq, D).

  `__call__` is the full-sequence path of training and scoring; `project_kv`, `decode_self` and
  `decode_cross` are the same projections and attention for one new position per row (generation)."""

  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  cross: bool = False

  def setup(self):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    kv_axis = "kv_embed" if self.cross else "embed"
    self.query = layers.dense(c.hidden_size, ("embed", "heads"), **kw)
    self.key = layers.dense(c.hidden_size, (kv_axis, "heads"), **kw)
    self.value = layers.dense(c.hidden_size, (kv_axis, "heads"), **kw)

  def _heads(self, t):
    return layers.split_heads(t, self.cfg.num_heads)

  def __call__(self, x, kv, bias, deterministic, kv_index=None):
    """x (B, Lq, D) queries, kv (Be, Lk, Dk) -> (B, Lq, D). kv_index: None (B == Be, row b to row b), a
    (B,) int array (row b to kv row kv_index[b]: K/V projected once per kv row, then gathered), or an
    int G (B == Be * G; rows b*G .. b*G+G-1 all attend to kv row b: their queries are laid end to end,
    so nothing is gathered, which keeps a batch-sharded step free of cross-device K/V copies)."""
    k, v = self.key(kv), self.value(kv)
    q = self.query(x)
    grouped = isinstance(kv_index, int)
    if grouped:
      q = q.reshape(kv.shape[0], -1, q.shape[-1])  # (Be, G * Lq, D)
    elif kv_index is not None:
      k, v = k[kv_index], v[kv_index]
    ctx = layers.attention(
      self._heads(q),
      self._heads(k),
      self._heads(v),
      bias,
      dropout_rate=self.cfg.attention_dropout,
      deterministic=deterministic,
      module=self,
    )
    ctx = layers.merge_heads(ctx)
    return ctx.reshape(x.shape[:2] + ctx.shape[2:]) if grouped else ctx

  def project_kv(self, states):
    """(Bi, Lk, Dk) encoder states -> K, V each (Bi, H, Lk, Dh), head-major (see layers.grouped_attention)."""
    head_major = lambda t: self._heads(t).transpose(0, 2, 1, 3)
    return head_major(self.key(states)), head_major(self.value(states))

  def decode_self(self, x, cache_k, cache_v, layer: int, pos):
    """Causal self-attention of the token at `pos` over the cache.

    x: (N, 1, D); cache_k, cache_v: (layers, N, T, H, Dh), positions < pos filled. This row's K/V are
    written at (layer, :, pos) of the stacked cache. Returns (context (N, 1, D), cache_k, cache_v)."""
    at = (layer, 0, pos, 0, 0)
    cache_k = jax.lax.dynamic_update_slice(cache_k, self._heads(self.key(x))[None].astype(cache_k.dtype), at)
    cache_v = jax.lax.dynamic_update_slice(cache_v, self._heads(self.value(x))[None].astype(cache_v.dtype), at)
    bias = jnp.where(jnp.arange(cache_k.shape[2]) <= pos, 0.0, layers.MASK_VALUE)[None, None, None, :]
    ctx = layers.attention(self._heads(self.query(x)), cache_k[layer], cache_v[layer], bias)
    return layers.merge_heads(ctx), cache_k, cache_v

  def decode_cross(self, x, k, v):
    """Cross-attention of (N, 1, D) rows, grouped by image (N = Bi * G), to `project_kv`'s (Bi, H, Lk, Dh)
    K/V: the G rows of an image are its query positions, so image K/V are never copied per beam."""
    q = self._heads(self.query(x))  # (N, 1, H, Dh)
    q = q.reshape((k.shape[0], -1) + q.shape[2:])  # (Bi, G, H, Dh)
    ctx = layers.grouped_attention(q, k, v)
    return layers.merge_heads(ctx.reshape((x.shape[0], 1) + ctx.shape[2:]))


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
      ys = [layers.dense(c.hidden_size, ("heads", "embed"), name=f"dense{j}", **kw)(t) for j, t in enumerate(ctxs)]
      if self.merge:
        y = layers.dense(c.hidden_size, ("mlp", "embed"), name="merge_layer", **kw)(jnp.concatenate(ys, axis=-1))
      else:
        y = sum(ys) / len(ys)
    y = nn.Dropout(c.hidden_dropout)(y, deterministic=deterministic)
    return layers.layer_norm(c.layer_norm_eps, name="LayerNorm", **kw)(y + residual)


class Attention(nn.Module):
  """Self-attention (`cross=False`) or cross-attention over one or several (NLVR2) encoder state
  tensors: BERT's `attention` / `crossattention` block = `self` (or `self0`, `self1`) + `output`."""

  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  cross: bool = False
  merge: bool = False

  @property
  def branch_names(self) -> tuple[str, ...]:
    n = self.cfg.num_cross_branches if self.cross else 1
    return ("self",) if n == 1 else tuple(f"self{j}" for j in range(n))

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for name in self.branch_names:  # named by attribute: self, or self0 / self1
      setattr(self, name, SelfOrCross(self.cfg, cross=self.cross, **kw))
    self.output = AttentionOutput(self.cfg, merge=self.merge, **kw)

  def __call__(self, x, bias, kvs=None, kv_biases=None, deterministic=True, kv_index=None):
    if not self.cross:
      ctxs = [self.self(x, x, bias, deterministic)]
    else:
      ctxs = [
        getattr(self, n)(x, kv, kb, deterministic, kv_index) for n, kv, kb in zip(self.branch_names, kvs, kv_biases)
      ]
    return self.output(ctxs, x, deterministic)

  def project_kv(self, states):
    return self.self.project_kv(states)

  def decode_self(self, x, cache_k, cache_v, layer: int, pos):
    ctx, cache_k, cache_v = self.self.decode_self(x, cache_k, cache_v, layer, pos)
    return self.output([ctx], x, True), cache_k, cache_v

  def decode_cross(self, x, k, v):
    return self.output([self.self.decode_cross(x, k, v)], x, True)


class Layer(nn.Module):
  """One MED layer: self-attention (encoder or decoder copy) -> optional cross-attention -> FFN.
  Submodules are created lazily, so a task's tree holds only the self-attention copies it calls."""

  cfg: TextConfig
  layer_index: int
  dtype: Any
  param_dtype: Any

  def setup(self):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.attention = Attention(c, **kw)
    self.decoder_attention = Attention(c, **kw)
    merge = c.num_cross_branches > 1 and self.layer_index >= c.cross_merge_from_layer
    self.crossattention = Attention(c, cross=True, merge=merge, **kw)
    self.decoder_crossattention = Attention(c, cross=True, **kw)  # share "all_but_ca" / "none" only
    self.intermediate = layers.dense(c.intermediate_size, ("embed", "mlp"), **kw)
    self.output = layers.dense(c.hidden_size, ("mlp", "embed"), **kw)
    self.output_LayerNorm = layers.layer_norm(c.layer_norm_eps, **kw)
    if c.share == "none":
      self.decoder_intermediate = layers.dense(c.intermediate_size, ("embed", "mlp"), **kw)
      self.decoder_output = layers.dense(c.hidden_size, ("mlp", "embed"), **kw)
      self.decoder_output_LayerNorm = layers.layer_norm(c.layer_norm_eps, **kw)
    # the name an inline nn.Dropout gets: dropout masks derive from the module path, so keeping it
    # keeps training runs identical to those of earlier versions
    self.Dropout_0 = nn.Dropout(c.hidden_dropout)

  def _self_attention(self, mode: str) -> Attention:
    own = mode == "decoder" and self.cfg.share in ("all_but_sa", "none")
    return self.decoder_attention if own else self.attention

  def _cross_attention(self, mode: str) -> Attention:
    own = mode == "decoder" and self.cfg.share in ("all_but_ca", "none")
    return self.decoder_crossattention if own else self.crossattention

  def __call__(self, x, self_bias, kvs, kv_biases, kv_index, mode: str, deterministic: bool):
    x = self._self_attention(mode)(x, self_bias, deterministic=deterministic)
    if mode != "text":
      x = self._cross_attention(mode)(x, None, kvs, kv_biases, deterministic, kv_index)
    return nn.with_logical_constraint(self.ffn(x, deterministic, mode), ("batch", "length", "embed"))

  def ffn(self, x, deterministic: bool, mode: str = "text"):
    if mode == "decoder" and self.cfg.share == "none":
      dense_in, dense_out, norm = self.decoder_intermediate, self.decoder_output, self.decoder_output_LayerNorm
    else:
      dense_in, dense_out, norm = self.intermediate, self.output, self.output_LayerNorm
    h = layers.gelu(dense_in(x))
    h = self.Dropout_0(dense_out(h), deterministic=deterministic)
    return norm(h + x)

  def project_decoder_kv(self, image_embeds):
    """The decoder's cross-attention K/V of (Bi, Lk, Dk) encoder states (see SelfOrCross.project_kv)."""
    return self._cross_attention("decoder").project_kv(image_embeds)

  def decode(self, x, cache_k, cache_v, pos, cross_k, cross_v):
    """The decoder-mode layer for one new position per row (see SelfOrCross.decode_*)."""
    x, cache_k, cache_v = self._self_attention("decoder").decode_self(x, cache_k, cache_v, self.layer_index, pos)
    x = self._cross_attention("decoder").decode_cross(x, cross_k, cross_v)
    return self.ffn(x, True, "decoder"), cache_k, cache_v


class Embeddings(nn.Module):
  cfg: TextConfig
  dtype: Any
  param_dtype: Any

  def setup(self):
    c = self.cfg
    init = nn.with_logical_partitioning(layers.BERT_INIT, ("vocab", "embed"))
    self.word_embeddings = nn.Embed(
      c.vocab_size, c.hidden_size, embedding_init=init, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.position_embeddings = nn.Embed(
      c.max_position_embeddings,
      c.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(layers.BERT_INIT, ("positions", "embed")),
    )
    self.LayerNorm = layers.layer_norm(c.layer_norm_eps, name=None, dtype=self.dtype, param_dtype=self.param_dtype)
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
    bias = self.param(
      "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)), (c.vocab_size,), self.param_dtype
    )
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
    self.decoder_embeddings = Embeddings(self.cfg, **kw)  # share "none" only
    # static: mode (6) and deterministic (7), counting self as 0.
    layer_cls = layers.maybe_remat(Layer, self.remat, static_argnums=(6, 7))
    self.layer = [layer_cls(self.cfg, i, **kw) for i in range(self.cfg.num_layers)]
    self.cls = LMHead(self.cfg, **kw)

  def __call__(
    self,
    ids: jax.Array,
    mask: jax.Array,
    *,
    mode: str = "text",
    encoder_states: jax.Array | tuple[jax.Array, ...] | None = None,
    encoder_mask: jax.Array | tuple[jax.Array, ...] | None = None,
    encoder_index: jax.Array | None = None,
    train: bool = False,
  ) -> jax.Array:
    """Hidden states of the last layer.

    Args:
      ids: (B, L) int token ids, first token already [CLS]/[ENC]/[DEC] as the mode needs.
      mask: (B, L) 1 for real tokens, 0 for padding.
      mode: one of MODES.
      encoder_states: (B, Lk, Dk) states to cross-attend to (a tuple of them for NLVR2).
      encoder_mask: (B, Lk) 1/0 (tuple for NLVR2); None = attend to all.
      encoder_index: (B,) int, optional: text row b attends to encoder row encoder_index[b] of
        encoder_states (Be, Lk, Dk). Cross-attention K/V are then projected once per encoder row and
        gathered, so several texts per image (ITM negatives) cost one projection per image. Or an int
        G: B == Be * G and rows b*G .. b*G+G-1 attend to encoder row b, with no gather at all (the
        layout a batch-sharded step needs: an index gather makes XLA all-gather every layer's K/V).
    Returns:
      (B, L, D) in the compute dtype.
    """
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    if ids.shape[1] > self.cfg.max_position_embeddings:
      raise ValueError(f"text length {ids.shape[1]} exceeds max_position_embeddings {self.cfg.max_position_embeddings}")
    deterministic = not train
    positions = jnp.arange(ids.shape[1])[None, :]
    x = self._embeddings(mode)(ids, positions, deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    self_bias = layers.causal_padding_bias(mask) if mode == "decoder" else layers.padding_bias(mask)
    kvs = kv_biases = None
    if mode != "text":
      if encoder_states is None:
        raise ValueError(f"mode={mode!r} needs encoder_states")
      kvs = tuple(encoder_states) if isinstance(encoder_states, (tuple, list)) else (encoder_states,)
      if len(kvs) != self.cfg.num_cross_branches:
        raise ValueError(f"{len(kvs)} encoder state tensors for num_cross_branches={self.cfg.num_cross_branches}")
      if encoder_mask is None:
        masks = tuple(jnp.ones(s.shape[:2], jnp.int32) for s in kvs)
      else:
        masks = tuple(encoder_mask) if isinstance(encoder_mask, (tuple, list)) else (encoder_mask,)
      if encoder_index is not None and not isinstance(encoder_index, int):
        masks = tuple(m[encoder_index] for m in masks)
      kv_biases = tuple(layers.padding_bias(m) for m in masks)
      kvs = tuple(s.astype(self.dtype) for s in kvs)
    for layer in self.layer:
      x = layer(x, self_bias, kvs, kv_biases, encoder_index, mode, deterministic)
    return x

  def _embeddings(self, mode: str) -> Embeddings:
    return self.decoder_embeddings if mode == "decoder" and self.cfg.share == "none" else self.embeddings

  def logits(self, hidden: jax.Array) -> jax.Array:
    """(B, L, D) decoder states -> (B, L, V) float32 logits (tied word embeddings + bias)."""
    return self.cls(hidden, self._embeddings("decoder")).astype(jnp.float32)

  # ---- incremental decoding (generation): the same layers, one new position per row -----------------

  def cross_kv(self, image_embeds: jax.Array):
    """(Bi, Lk, Dv) image tokens -> (K, V), each a tuple over layers of (Bi, H, Lk, Dh): every layer's
    cross-attention keys and values, computed once and reused by every decoding step and beam. One
    array per layer, not one stacked array: XLA:CPU copied each layer's slice of a stacked array on
    every step (4x slower decoding at batch 16)."""
    kv = [layer.project_decoder_kv(image_embeds.astype(self.dtype)) for layer in self.layer]
    return tuple(k for k, _ in kv), tuple(v for _, v in kv)

  def decode_step(self, tokens: jax.Array, pos: jax.Array, cache, cross):
    """Feed one token per row at position `pos`; return next-token logits and the updated cache.

    Args:
      tokens: (N,) int ids at position pos (pos 0 holds [DEC]).
      pos: scalar int32.
      cache: (K, V), each (layers, N, T, H, Dh) (see generate.decoder.init_cache), positions < pos filled.
      cross: `cross_kv` over Bi images; the N rows are grouped by image (N = Bi * G: beams or samples of
        image i are rows i*G .. i*G+G-1).
    Returns:
      logits (N, V) float32, new cache.
    """
    x = self._embeddings("decoder")(tokens[:, None], jnp.reshape(pos, (1, 1)), True)  # (N, 1, D)
    cache_k, cache_v = cache
    for i, layer in enumerate(self.layer):
      x, cache_k, cache_v = layer.decode(x, cache_k, cache_v, pos, cross[0][i], cross[1][i])
    return self.logits(x)[:, 0], (cache_k, cache_v)

"""timm-style Vision Transformer with BLIP's exact semantics (reference section 2).

Parameter tree (names mirror timm so interop is mechanical):
  patch_embed/{kernel (p*p*3, D), bias}   the k=s=p conv as one matmul over flattened (kh, kw, c) patches
  cls_token (1, 1, D), pos_embed (1, 1+N, D)
  blocks_{i}/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}}
  norm
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models import layers
from blip_jax.models.config import VisionConfig


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)*(W/p), p*p*C), patches row-major, pixels in (kh, kw, c) order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class Attention(nn.Module):
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    d, h = self.cfg.width, self.cfg.num_heads
    qkv = layers.dense(
      3 * d, ("embed", "qkv"), name="qkv", dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.VIT_INIT
    )(x)
    b, n, _ = qkv.shape
    # Columns are [q | k | v], each head-major (timm: reshape(B, N, 3, H, Dh)).
    qkv = qkv.reshape(b, n, 3, h, d // h)
    out = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], None)
    return layers.dense(
      d, ("heads", "embed"), name="proj", dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.VIT_INIT
    )(layers.merge_heads(out))


class Mlp(nn.Module):
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.VIT_INIT)
    x = layers.dense(self.cfg.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    x = layers.gelu(x)
    return layers.dense(self.cfg.width, ("mlp", "embed"), name="fc2", **kw)(x)


def drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth: drop the whole residual branch per example, rescale the kept ones."""
  if rate == 0.0 or deterministic:
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class Block(nn.Module):
  cfg: VisionConfig
  drop_path_rate: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.cfg.layer_norm_eps
    y = Attention(self.cfg, name="attn", **kw)(layers.layer_norm(eps, name="norm1", **kw)(x))
    x = x + drop_path(self, y, self.drop_path_rate, deterministic)
    y = Mlp(self.cfg, name="mlp", **kw)(layers.layer_norm(eps, name="norm2", **kw)(x))
    x = x + drop_path(self, y, self.drop_path_rate, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class VisionTransformer(nn.Module):
  """images (B, H, W, 3), normalised -> (B, 1 + (H/p)*(W/p), D) after the final LayerNorm."""

  cfg: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  remat_blocks: int = 0  # rematerialise only the last n blocks (0 = every block)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    c = self.cfg
    if images.shape[1] % c.patch_size or images.shape[2] % c.patch_size:
      raise ValueError(f"image size {images.shape[1:3]} is not a multiple of patch {c.patch_size}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = patchify(images.astype(self.dtype), c.patch_size)
    x = layers.dense(c.width, ("patch", "embed"), name="patch_embed", kernel_init=layers.VIT_INIT, **kw)(x)
    cls = self.param(
      "cls_token",
      nn.with_logical_partitioning(layers.VIT_INIT, (None, None, "embed")),
      (1, 1, c.width),
      self.param_dtype,
    )
    pos = self.param(
      "pos_embed",
      nn.with_logical_partitioning(layers.VIT_INIT, (None, None, "embed")),
      (1, c.num_tokens, c.width),
      self.param_dtype,
    )
    if x.shape[1] + 1 != pos.shape[1]:
      raise ValueError(
        f"{x.shape[1] + 1} image tokens but pos_embed has {pos.shape[1]} positions: "
        f"resize it with blip_jax.models.pos_embed.resize_pos_embed"
      )
    # CLS is prepended first, then pos_embed added to all tokens (timm order).
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, c.width)), x], axis=1)
    x = x + pos.astype(self.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    remat_cls = layers.maybe_remat(Block, self.remat, static_argnums=(2,))
    first_remat = c.depth - self.remat_blocks if self.remat_blocks else 0
    rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # timm linspace
    for i in range(c.depth):
      block_cls = remat_cls if i >= first_remat else Block
      x = block_cls(c, rates[i], name=f"blocks_{i}", **kw)(x, not train)
    return layers.layer_norm(c.layer_norm_eps, name="norm", **kw)(x)

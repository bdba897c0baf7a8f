"""Building blocks shared by the ViT and the MED text transformer.

Every kernel is 2-D and carries logical axis names (flax lm1b style); the mesh rules that map them to
(data, fsdp, tensor) live in the experiment config. Rank >= 3 kernels are avoided on purpose: Linen
DenseGeneral kernels with logical names fail under `jax.set_mesh` (reference section 11).

Logical axes used: "embed" (model width), "mlp" (FFN width), "heads" (attention width, head-major),
"qkv" (fused ViT q|k|v width), "vocab", "kv_embed" (cross-attention input width), "patch" (flattened
patch pixels), "proj" (ITC width), "classes" (ITM head outputs), "positions" (text position table),
"embed_out" (LM-head transform output). Activations: "batch", "length".
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Additive mask value of the official BERT/BLIP code. Finite on purpose: bf16-safe, and a fully
# masked row stays a uniform softmax instead of NaN.
MASK_VALUE = -10000.0

BERT_INIT = nn.initializers.normal(stddev=0.02)
VIT_INIT = nn.initializers.truncated_normal(stddev=0.02)


def dense(
  features: int,
  axes: tuple[str | None, str | None],
  *,
  name: str | None = None,
  dtype: Any,
  param_dtype: Any = jnp.float32,
  kernel_init=BERT_INIT,
) -> nn.Dense:
  """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(kernel_init, axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
  )


def layer_norm(eps: float, *, name: str | None = None, dtype: Any, param_dtype: Any = jnp.float32) -> nn.LayerNorm:
  """LayerNorm with logically-named scale/bias. Statistics are computed in float32 by Flax."""
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
  )


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as in BLIP's ViT and BERT. jax.nn.gelu defaults to the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """(B, L, H*Dh) -> (B, L, H, Dh); head-major columns, like PyTorch `.view(B, L, H, Dh)`."""
  b, l, d = x.shape
  return x.reshape(b, l, num_heads, d // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
  b, l, h, dh = x.shape
  return x.reshape(b, l, h * dh)


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  *,
  dropout_rate: float = 0.0,
  deterministic: bool = True,
  module: nn.Module | None = None,
) -> jax.Array:
  """Scaled dot-product attention.

  Args:
    q: (B, Lq, H, Dh); k, v: (B, Lk, H, Dh).
    bias: additive mask broadcastable to (B, H, Lq, Lk), or None.
    dropout_rate: dropout on the attention probabilities (BERT); needs `module` for the rng.
  Returns:
    (B, Lq, H, Dh) in q's dtype. Logits and softmax run in float32 whatever the compute dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and not deterministic:
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """G query rows per key set, every key valid (decoding: the beams or samples of one image).

  Args:
    q: (Bi, G, H, Dh); k, v: (Bi, H, Lk, Dh), head-major (the layout a decoding step reads, so no step
      transposes the largest arrays it touches).
  Returns:
    (Bi, G, H, Dh). Same arithmetic as `attention` (float32 logits and softmax); (image, head) pairs
    are merged into one batch dimension of plain dot_generals, because XLA:CPU ran the equivalent
    two-batch-dim einsum 3x slower at decoding shapes (G = 3 beams).
  """
  bi, g, h, d = q.shape
  s = k.shape[2]
  qh = q.transpose(0, 2, 1, 3).reshape(bi * h, g, d)
  dims = lambda contract: (contract, ((0,), (0,)))
  logits = (
    jax.lax.dot_general(qh, k.reshape(bi * h, s, d), dims(((2,), (2,))), preferred_element_type=jnp.float32) * d**-0.5
  )
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  ctx = jax.lax.dot_general(probs, v.reshape(bi * h, s, d), dims(((2,), (1,))))
  return ctx.reshape(bi, h, g, d).transpose(0, 2, 1, 3)


def padding_bias(mask: jax.Array) -> jax.Array:
  """(B, Lk) 1/0 key mask -> (B, 1, 1, Lk) additive bias."""
  return ((1.0 - mask.astype(jnp.float32)) * MASK_VALUE)[:, None, None, :]


def causal_padding_bias(mask: jax.Array) -> jax.Array:
  """(B, L) padding mask -> (B, 1, L, L) bias for causal AND padding (BERT decoder semantics)."""
  l = mask.shape[1]
  causal = jnp.tril(jnp.ones((l, l), jnp.float32))
  allowed = causal[None, :, :] * mask.astype(jnp.float32)[:, None, :]
  return ((1.0 - allowed) * MASK_VALUE)[:, None, :, :]


def remat_policy(name: str):
  """Config string -> jax.checkpoint policy (None = save nothing)."""
  return {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def maybe_remat(module_cls, name: str, static_argnums: Sequence[int]):
  """Wrap a block class in nn.remat unless name == "none"."""
  if name == "none":
    return module_cls
  return nn.remat(module_cls, policy=remat_policy(name), static_argnums=tuple(static_argnums))

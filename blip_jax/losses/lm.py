"""Language-modelling loss of the image-grounded decoder (reference section 5, step 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-token CE with PyTorch's label smoothing: (1-e) * nll + e * mean_c(-log p_c).

  Args: logits (..., V), targets (...) int. Returns (...) float32.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  if label_smoothing == 0.0:
    return nll
  return (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)


def lm_loss(
  logits: jax.Array, ids: jax.Array, mask: jax.Array, label_smoothing: float = 0.1, prompt_length: int = 0
) -> jax.Array:
  """Next-token loss of decoder logits, mean over predicted (non-ignored) tokens.

  Args:
    logits: (B, L, V) from positions 0..L-1 (position k predicts token k+1).
    ids: (B, L) the decoder input ids (first token [DEC]).
    mask: (B, L) 1 for real tokens; padding is ignored as a target.
    label_smoothing: 0.1 in BLIP.
    prompt_length: leading target positions to ignore (captioning masks "[DEC] a picture of" = 4).
  Returns:
    scalar float32.
  """
  targets = ids[:, 1:]
  weights = mask[:, 1:].astype(jnp.float32)
  if prompt_length > 1:
    weights = weights * (jnp.arange(1, ids.shape[1]) >= prompt_length)[None, :]
  per_token = smoothed_cross_entropy(logits[:, :-1], targets, label_smoothing)
  return (per_token * weights).sum() / jnp.maximum(weights.sum(), 1.0)

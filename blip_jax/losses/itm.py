"""Image-text matching with hard negatives (reference s.5 step 5; s.7 for retrieval fine-tuning).

Two ways to draw negatives, as in the two official code paths:
  "local"  (pretraining): within each data shard of the batch, weights softmax(sim) + 1e-4 over the
           shard's momentum features, own pair zeroed; sims are the ITC logits (online vs momentum).
  "global" (retrieval fine-tuning): over the whole batch, weights softmax(sim) of online vs online
           features, every pair with the same image id zeroed (no +1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blip_jax.losses.lm import smoothed_cross_entropy


def negative_weights_local(sim: jax.Array, groups: int) -> jax.Array:
  """(B, B) sims -> (B, B) sampling weights that are zero outside each row's shard and on its pair.

  Row b belongs to shard b // (B / groups) and may only draw columns of that shard.
  """
  b = sim.shape[0]
  if b % groups:
    raise ValueError(f"batch {b} is not divisible into {groups} shards")
  shard = jnp.arange(b) // (b // groups)
  same_shard = shard[:, None] == shard[None, :]
  # softmax over the shard's columns only (the official code sees only its local batch)
  logits = jnp.where(same_shard, sim, -jnp.inf)
  w = jax.nn.softmax(logits, axis=1) + 1e-4
  return jnp.where(same_shard & ~jnp.eye(b, dtype=bool), w, 0.0)


def negative_weights_global(sim: jax.Array, idx: jax.Array) -> jax.Array:
  """(B, B) sims, (B,) image ids -> weights softmax(sim) with same-id pairs zeroed."""
  w = jax.nn.softmax(sim, axis=1)
  return jnp.where(idx[:, None] == idx[None, :], 0.0, w)


def sample_negatives(rng: jax.Array, weights: jax.Array) -> jax.Array:
  """One column per row, drawn with probability proportional to weights (torch.multinomial(w, 1))."""
  logw = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
  return jax.random.categorical(rng, logw, axis=1)


def hard_negatives(
  rng: jax.Array,
  sim_i2t: jax.Array,
  sim_t2i: jax.Array,
  *,
  mode: str = "local",
  groups: int = 1,
  idx: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Indices of the negative image for each text and the negative text for each image.

  Args:
    sim_i2t, sim_t2i: (B, B) similarity logits (rows: images / texts).
    mode: "local" (groups = data shards) or "global" (needs idx).
  Returns:
    (neg_image_for_text, neg_text_for_image), each (B,) int32 indices into the batch.
  """
  sim_i2t, sim_t2i = jax.lax.stop_gradient((sim_i2t, sim_t2i))
  if mode == "local":
    w_i2t, w_t2i = negative_weights_local(sim_i2t, groups), negative_weights_local(sim_t2i, groups)
  elif mode == "global":
    if idx is None:
      raise ValueError("global hard negatives need image ids (idx)")
    w_i2t, w_t2i = negative_weights_global(sim_i2t, idx), negative_weights_global(sim_t2i, idx)
  else:
    raise ValueError(f"mode={mode!r}: must be 'local' or 'global'")
  r1, r2 = jax.random.split(rng)
  return sample_negatives(r1, w_t2i), sample_negatives(r2, w_i2t)


def itm_loss(pos_logits: jax.Array, neg_logits: jax.Array) -> jax.Array:
  """Mean CE over B positives (label 1) and 2B negatives (label 0). logits (B, 2) and (2B, 2)."""
  logits = jnp.concatenate([pos_logits, neg_logits]).astype(jnp.float32)
  labels = jnp.concatenate([jnp.ones(pos_logits.shape[0], jnp.int32), jnp.zeros(neg_logits.shape[0], jnp.int32)])
  return smoothed_cross_entropy(logits, labels, 0.0).mean()

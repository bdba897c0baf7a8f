"""Image-text matching with hard negatives (reference s.5 step 5; s.7 for retrieval fine-tuning).

Negatives are drawn within groups of the batch (each data shard, like the official per-GPU code, or
the whole batch as one group), with the weights of the two official code paths:
  pretraining (no ids): softmax(sim) + 1e-4 over the group, own pair zeroed; sims are the ITC logits
           (online vs momentum).
  retrieval fine-tuning (image ids): softmax(sim) over the group of online vs online features, every
           pair with the same image id zeroed (no +1e-4). COCO draws over the whole batch
           (`negative_all_rank`), Flickr within each GPU's batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blip_jax.losses.lm import smoothed_cross_entropy


def negative_weights(
  sim: jax.Array, groups: int = 1, idx: jax.Array | None = None, exclude: jax.Array | None = None
) -> jax.Array:
  """(B, B) sims -> (B, B) sampling weights, zero outside each row's shard and on its positives.

  Row b belongs to shard b // (B / groups) and may only draw columns of that shard. Without image ids
  the positive is the row's own pair and every weight gets +1e-4 (pretraining); with idx (B,) every
  column of the same image id is a positive (retrieval). exclude (B, B) bool: further columns never to
  draw (pairs whose texts are identical, `Objective.distinct_text_negatives`); a row left with nothing
  to draw keeps its weights without them.
  """
  w = _negative_weights(sim, groups, idx)
  if exclude is None:
    return w
  kept = jnp.where(exclude, 0.0, w)
  return jnp.where(kept.sum(axis=1, keepdims=True) > 0, kept, w)


def _negative_weights(sim: jax.Array, groups: int, idx: jax.Array | None) -> jax.Array:
  b = sim.shape[0]
  if b % groups:
    raise ValueError(f"batch {b} is not divisible into {groups} shards")
  shard = jnp.arange(b) // (b // groups)
  same_shard = shard[:, None] == shard[None, :]
  # softmax over the shard's columns only (the official code sees only its local batch)
  logits = jnp.where(same_shard, sim, -jnp.inf)
  w = jax.nn.softmax(logits, axis=1)
  if idx is None:
    return jnp.where(same_shard & ~jnp.eye(b, dtype=bool), w + 1e-4, 0.0)
  return jnp.where(same_shard & (idx[:, None] != idx[None, :]), w, 0.0)


def sample_negatives(rng: jax.Array, weights: jax.Array) -> jax.Array:
  """One column per row, drawn with probability proportional to weights (torch.multinomial(w, 1))."""
  logw = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
  return jax.random.categorical(rng, logw, axis=1)


def hard_negatives(
  rng: jax.Array,
  sim_i2t: jax.Array,
  sim_t2i: jax.Array,
  *,
  groups: int = 1,
  idx: jax.Array | None = None,
  exclude: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Indices of the negative image for each text and the negative text for each image.

  Args:
    sim_i2t, sim_t2i: (B, B) similarity logits (rows: images / texts).
    groups: draw within this many equal shards of the batch (1 = the whole batch).
    idx: (B,) image ids (retrieval weights, see negative_weights) or None (pretraining weights).
    exclude: (B, B) bool, symmetric: pairs never drawn as negatives (see negative_weights).
  Returns:
    (neg_image_for_text, neg_text_for_image), each (B,) int32 indices into the batch.
  """
  sim_i2t, sim_t2i = jax.lax.stop_gradient((sim_i2t, sim_t2i))
  w_i2t, w_t2i = negative_weights(sim_i2t, groups, idx, exclude), negative_weights(sim_t2i, groups, idx, exclude)
  r1, r2 = jax.random.split(rng)
  return sample_negatives(r1, w_t2i), sample_negatives(r2, w_i2t)


def shuffled_texts(rng: jax.Array, ids: jax.Array, mask: jax.Array, fallback: jax.Array) -> jax.Array:
  """Word-order negatives (not in BLIP; NegCLIP's order-shuffled hard negatives): each text's tokens
  between its first token and its last real token ([SEP]) in a random order.

  Args:
    ids, mask: (B, L) texts ([CLS] first, [SEP] last real token, padding after).
    fallback: (B, L) texts for the rows whose shuffle changes nothing (one movable token, or a draw
      that restores the order): those would be positives labelled as negatives.
  Returns:
    (B, L) ids; the mask is the input mask (fallback rows take their own mask from the caller).
  """
  b, length = ids.shape
  pos = jnp.arange(length)[None, :]
  n = mask.sum(axis=1, keepdims=True)
  movable = (pos >= 1) & (pos < n - 1)
  # sorted keys: position 0 (-1), then the movable positions in random order ([0, 1)), then the rest
  # in place (1 + pos): the movable slots 1 .. n-2 receive a permutation of themselves
  keys = jnp.where(pos == 0, -1.0, jnp.where(movable, jax.random.uniform(rng, (b, length)), 1.0 + pos))
  out = jnp.take_along_axis(ids, jnp.argsort(keys, axis=1), axis=1)
  unchanged = (out == ids).all(axis=1, keepdims=True)
  return jnp.where(unchanged, fallback, out)


def itm_loss(pos_logits: jax.Array, neg_logits: jax.Array) -> jax.Array:
  """Mean CE over B positives (label 1) and 2B negatives (label 0). logits (B, 2) and (2B, 2)."""
  logits = jnp.concatenate([pos_logits, neg_logits]).astype(jnp.float32)
  labels = jnp.concatenate([jnp.ones(pos_logits.shape[0], jnp.int32), jnp.zeros(neg_logits.shape[0], jnp.int32)])
  return smoothed_cross_entropy(logits, labels, 0.0).mean()

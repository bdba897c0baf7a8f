"""Image-text contrastive loss with momentum distillation and feature queues (reference s.5 step 3,
s.7 for the multi-positive retrieval variant).

All features are L2-normalised. The batch here is whatever the caller passes; the train step passes
the global batch (all data shards), so every shard's examples are negatives of every other's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def itc_targets(
  batch: int, queue_size: int, idx: jax.Array | None = None, idx_queue: jax.Array | None = None
) -> jax.Array:
  """Hard targets over [batch ; queue] columns, (B, B+Q) rows summing to 1.

  Without ids: one-hot on the diagonal (pretraining). With image ids (retrieval fine-tuning): every
  column whose id equals the row's id is a positive, targets = pos / pos.sum().
  """
  if idx is None:
    return jnp.eye(batch, batch + queue_size, dtype=jnp.float32)
  all_idx = jnp.concatenate([idx, idx_queue])
  pos = (idx[:, None] == all_idx[None, :]).astype(jnp.float32)
  return pos / pos.sum(axis=1, keepdims=True)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """mean_b( -sum_c targets[b, c] * log_softmax(logits)[b, c] )."""
  return -(jax.nn.log_softmax(logits, axis=1) * targets).sum(axis=1).mean()


def itc_loss(
  image_feat, text_feat, image_feat_m, text_feat_m, image_queue, text_queue, temp, alpha, idx=None, idx_queue=None
):
  """ITC with momentum distillation.

  Args:
    image_feat, text_feat: (B, E) online features (gradients flow through these).
    image_feat_m, text_feat_m: (B, E) momentum-encoder features (no gradient).
    image_queue, text_queue: (Q, E) queued momentum features.
    temp: scalar, already clamped. alpha: distillation weight (0.4, ramped up over the first epochs).
    idx, idx_queue: (B,), (Q,) image ids for the multi-positive retrieval targets, or None.
  Returns:
    (loss, aux) with aux = {"sim_i2t": (B, B+Q), "sim_t2i": (B, B+Q)} logits, reused by hard-negative
    mining.
  """
  image_feat_m, text_feat_m = jax.lax.stop_gradient((image_feat_m, text_feat_m))
  image_all = jnp.concatenate([image_feat_m, image_queue]).astype(jnp.float32)  # (B+Q, E)
  text_all = jnp.concatenate([text_feat_m, text_queue]).astype(jnp.float32)
  targets = itc_targets(image_feat.shape[0], image_queue.shape[0], idx, idx_queue)
  sim_i2t_m = image_feat_m @ text_all.T / temp
  sim_t2i_m = text_feat_m @ image_all.T / temp
  i2t_targets = jax.lax.stop_gradient(alpha * jax.nn.softmax(sim_i2t_m, axis=1) + (1 - alpha) * targets)
  t2i_targets = jax.lax.stop_gradient(alpha * jax.nn.softmax(sim_t2i_m, axis=1) + (1 - alpha) * targets)
  sim_i2t = image_feat @ text_all.T / temp
  sim_t2i = text_feat @ image_all.T / temp
  loss = (soft_cross_entropy(sim_i2t, i2t_targets) + soft_cross_entropy(sim_t2i, t2i_targets)) / 2
  return loss, {"sim_i2t": sim_i2t, "sim_t2i": sim_t2i}


def alpha_schedule(step, ramp_steps: int, alpha: float = 0.4):
  """alpha * min(1, step / ramp_steps); ramp = 2 epochs of steps in pretraining, 1 in retrieval."""
  return alpha * jnp.minimum(1.0, step / max(ramp_steps, 1))

"""AdamW and BLIP's learning-rate schedules (reference section 5, "Optimisation"; section 7)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def pretrain_schedule(
  peak_lr: float,
  warmup_steps: int,
  steps_per_epoch: int,
  decay_rate: float = 0.9,
  warmup_lr: float = 1e-6,
  min_lr: float = 1e-6,
):
  """Official pretraining: linear warmup from warmup_lr over the first steps (epoch 0), then
  lr = max(min_lr, peak * decay_rate ** epoch), constant within an epoch."""

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    epoch = jnp.floor(step / steps_per_epoch)
    decayed = jnp.maximum(min_lr, peak_lr * decay_rate**epoch)
    warm = jnp.minimum(peak_lr, warmup_lr + (peak_lr - warmup_lr) * step / max(warmup_steps, 1))
    return jnp.where((step < warmup_steps) & (epoch == 0), warm, decayed)

  return lr


def finetune_cosine_schedule(peak_lr: float, steps_per_epoch: int, epochs: int, min_lr: float = 0.0):
  """Official fine-tuning: per-epoch cosine from peak to min_lr over `epochs`."""

  def lr(step):
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
    return (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * epoch / epochs)) + min_lr

  return lr


def decay_mask(params, mode: str = "all"):
  """Which leaves get weight decay: "all" (official: biases, norms and temp too) or "matrices"."""
  if mode == "all":
    return jax.tree.map(lambda _: True, params)
  if mode == "matrices":
    return jax.tree.map(lambda x: x.ndim >= 2, params)
  raise ValueError(f"weight_decay_mask={mode!r}: must be 'all' or 'matrices'")


def make_optimizer(
  schedule,
  weight_decay: float = 0.05,
  decay_mode: str = "all",
  clip_norm: float | None = None,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
):
  """AdamW (torch defaults) with an optional global-norm clip (off in the paper)."""
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  chain.append(
    optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=lambda p: decay_mask(p, decay_mode))
  )
  return optax.chain(*chain)

"""BLIP objectives: ITC (momentum distillation + queues), ITM (hard negatives), LM (label smoothing)."""

from blip_jax.losses.itc import alpha_schedule, itc_loss, itc_targets
from blip_jax.losses.itm import hard_negatives, itm_loss, shuffled_texts
from blip_jax.losses.lm import lm_loss, smoothed_cross_entropy

__all__ = [
  "alpha_schedule",
  "hard_negatives",
  "shuffled_texts",
  "itc_loss",
  "itc_targets",
  "itm_loss",
  "lm_loss",
  "smoothed_cross_entropy",
]

"""BLIP objectives: LM (here), ITC and ITM (pretraining issue)."""
from blip_jax.losses.lm import lm_loss, smoothed_cross_entropy

__all__ = ["lm_loss", "smoothed_cross_entropy"]

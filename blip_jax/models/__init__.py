"""Flax Linen models: ViT, the MED text transformer and the BLIP task models."""

from blip_jax.models.blip import Blip, boxed_param_shapes, init_params, l2_normalize, param_logical_axes, param_shapes
from blip_jax.models.config import TASKS, BlipConfig, TextConfig, VisionConfig, tiny, vit_b16, vit_l16

__all__ = [
  "Blip",
  "BlipConfig",
  "TASKS",
  "boxed_param_shapes",
  "TextConfig",
  "VisionConfig",
  "init_params",
  "l2_normalize",
  "param_logical_axes",
  "param_shapes",
  "tiny",
  "vit_b16",
  "vit_l16",
]

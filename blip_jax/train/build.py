"""From an experiment config (ml_collections) to the objects the step needs, with validation that
names the offending key before anything compiles."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from blip_jax.models.config import BlipConfig, tiny, vit_b16, vit_l16
from blip_jax.train.optimizer import finetune_cosine_schedule, make_optimizer, pretrain_schedule
from blip_jax.train.pretrain_step import Objective, validate

VISION = {"vit_b16": vit_b16, "vit_l16": vit_l16}


def model_config(cfg, tokenizer=None) -> BlipConfig:
  """config.model -> BlipConfig; with a tokenizer, the text vocabulary and special ids follow it."""
  m = cfg.model
  if m.vision == "tiny":
    base = tiny(m.task, image_size=m.image_size, vision_width=m.get("vision_width", 48),
                text_width=m.get("text_width", 32))
  elif m.vision in VISION:
    base = BlipConfig(task=m.task, vision=VISION[m.vision](m.image_size))
  else:
    raise ValueError(f"config.model.vision={m.vision!r}: must be one of {sorted(VISION) + ['tiny']}")
  vision = dataclasses.replace(base.vision, drop_path_rate=m.drop_path_rate)
  if tokenizer is not None:
    sp = tokenizer.special
    base = base.replace(text=dataclasses.replace(
        base.text, vocab_size=tokenizer.vocab_size, pad_token_id=sp.pad, cls_token_id=sp.cls,
        sep_token_id=sp.sep, bos_token_id=sp.dec, enc_token_id=sp.enc))
  return base.replace(vision=vision, dtype=m.dtype, vision_remat=m.vision_remat, text_remat=m.text_remat)


def mesh_shape(cfg, num_devices: int) -> tuple[int, int, int]:
  """config.mesh with one -1 filled in from the device count."""
  shape = list(cfg.mesh)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"config.mesh={tuple(cfg.mesh)}: three sizes (data, fsdp, tensor), at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh={tuple(cfg.mesh)} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"config.mesh={tuple(shape)} needs {int(np.prod(shape))} devices, {num_devices} available")
  return tuple(shape)


def steps_per_epoch(cfg) -> int:
  return max(1, cfg.num_examples // cfg.global_batch)


def objective(cfg, mesh: tuple[int, int, int]) -> Objective:
  o = cfg.objective
  data_shards = mesh[0] * mesh[1]
  if cfg.global_batch % data_shards:
    raise ValueError(f"config.global_batch={cfg.global_batch} is not divisible by the {data_shards} data "
                     f"shards of config.mesh={mesh}")
  obj = Objective(queue_size=o.queue_size, momentum=o.momentum, alpha=o.alpha,
                  alpha_ramp_steps=int(math.ceil(o.alpha_ramp_epochs * steps_per_epoch(cfg))),
                  label_smoothing=o.label_smoothing, negatives=o.negatives,
                  negative_groups=data_shards if o.negatives == "local" else 1,
                  multi_positive=cfg.model.task == "retrieval")
  validate(model_config(cfg), obj, cfg.global_batch, cfg.accum_steps)
  return obj


def learning_rate(cfg):
  """The schedule step -> lr of config.optimizer."""
  o = cfg.optimizer
  spe = steps_per_epoch(cfg)
  if o.schedule == "pretrain":
    return pretrain_schedule(o.peak_lr, o.warmup_steps, spe, o.decay_rate, o.warmup_lr, o.min_lr)
  if o.schedule == "cosine":
    return finetune_cosine_schedule(o.peak_lr, spe, cfg.epochs, o.min_lr)
  raise ValueError(f"config.optimizer.schedule={o.schedule!r}: must be 'pretrain' or 'cosine'")


def optimizer(cfg):
  o = cfg.optimizer
  return make_optimizer(learning_rate(cfg), o.weight_decay, o.decay_mode, o.clip_norm or None)


def sharding_rules(cfg):
  """config.sharding_rules as the list Flax expects (DEFAULT_RULES when absent)."""
  from blip_jax.train.sharding import DEFAULT_RULES
  rules = cfg.get("sharding_rules", None) or DEFAULT_RULES
  return [(name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules]

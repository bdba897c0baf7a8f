"""From an experiment config (ml_collections) to everything a run needs, validated once.

`experiment(cfg, num_devices, num_processes)` is the one validation pass: every check names its key
and runs before anything compiles. The trainer, `blip_jax.aot` and the benchmarks all call it, and
nothing downstream re-checks the config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import optax

from blip_jax import tasks
from blip_jax.models.config import TASKS, BlipConfig, TextConfig, tiny, vit_b16, vit_l16
from blip_jax.tasks.pretrain import Objective
from blip_jax.train.optimizer import finetune_cosine_schedule, make_optimizer, pretrain_schedule

VISION = {"vit_b16": vit_b16, "vit_l16": vit_l16}
DTYPES = ("float32", "bfloat16")

# (key, type, lower bound or None, whether the bound itself is allowed): the typed part of the check.
_NUMBERS = (
  ("global_batch", int, 1, True),
  ("text_length", int, 2, True),
  ("num_examples", int, 1, True),
  ("epochs", int, 1, True),
  ("accum_steps", int, 1, True),
  ("seed", int, None, True),
  ("log_every", int, 1, True),
  ("checkpoint_every", int, 1, True),
  ("keep_checkpoints", int, 1, True),
  ("preemption_check_every", int, 1, True),
  ("total_steps", int, 0, True),
  ("model.image_size", int, 1, True),
  ("model.drop_path_rate", float, 0.0, True),
  ("model.vision_remat_blocks", int, 0, True),
  ("optimizer.peak_lr", float, 0.0, False),
  ("optimizer.warmup_steps", int, 0, True),
  ("optimizer.warmup_lr", float, 0.0, True),
  ("optimizer.min_lr", float, 0.0, True),
  ("optimizer.weight_decay", float, 0.0, True),
  ("optimizer.clip_norm", float, 0.0, True),
  ("objective.queue_size", int, 0, True),
  ("objective.momentum", float, 0.0, True),
  ("objective.alpha", float, 0.0, True),
  ("objective.label_smoothing", float, 0.0, True),
  ("eval.every", int, 0, True),
  ("eval.num", int, 0, True),
  ("eval.batch", int, 1, True),
  ("eval.k_test", int, 1, True),
  ("eval.num_beams", int, 1, True),
  ("eval.max_length", int, 2, True),
  ("eval.min_length", int, 0, True),
  ("eval.max_captions", int, 1, True),
  ("data.max_skip_fraction", float, 0.0, True),
)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A validated experiment: the config and the objects derived from it."""

  cfg: Any  # the ml_collections ConfigDict
  task: tasks.Task
  model: BlipConfig
  mesh_shape: tuple[int, int, int]
  objective: Objective
  learning_rate: Callable[[int], Any]  # the schedule inside `optimizer`, for logging
  optimizer: optax.GradientTransformation
  rules: tuple[tuple[str, Any], ...]  # logical axis -> mesh axes
  steps_per_epoch: int
  total_steps: int


def experiment(cfg, num_devices: int, num_processes: int = 1, tokenizer=None) -> Experiment:
  """Validate `cfg` for `num_devices` devices over `num_processes` processes and build the run's
  objects. With a tokenizer, the model's vocabulary and special ids follow it.

  Raises:
    ValueError naming the offending key.
  """
  _check_numbers(cfg)
  task = tasks.get(cfg.model.task)
  model = model_config(cfg, tokenizer)
  mesh = mesh_shape(cfg, num_devices)
  if cfg.global_batch % num_processes:
    raise ValueError(f"config.global_batch={cfg.global_batch} is not divisible by the {num_processes} processes")
  obj = objective(cfg, mesh, tokenizer)
  lr = learning_rate(cfg)
  o = cfg.optimizer
  spe = steps_per_epoch(cfg)
  total = cfg.get("total_steps") or spe * cfg.epochs
  return Experiment(
    cfg,
    task,
    model,
    mesh,
    obj,
    lr,
    make_optimizer(lr, o.weight_decay, o.decay_mode, o.clip_norm or None),
    sharding_rules(cfg),
    spe,
    total,
  )


def _check_numbers(cfg) -> None:
  for key, kind, low, inclusive in _NUMBERS:
    node = cfg
    for part in key.split(".")[:-1]:
      node = node.get(part) if node is not None else None
    if node is None or key.split(".")[-1] not in node:
      continue  # optional keys; the required ones fail where they are used, naming the key
    value = node[key.split(".")[-1]]
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
      raise ValueError(f"config.{key}={value!r}: must be {'a number' if kind is float else 'an integer'}")
    if low is not None and (value < low or (value == low and not inclusive)):
      raise ValueError(f"config.{key}={value!r}: must be {'>=' if inclusive else '>'} {low}")


def model_config(cfg, tokenizer=None) -> BlipConfig:
  """config.model -> BlipConfig; with a tokenizer, the text vocabulary and special ids follow it."""
  m = cfg.model
  if m.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={m.dtype!r}: must be one of {DTYPES}")
  if m.vision == "tiny":
    base = tiny(
      m.task, image_size=m.image_size, vision_width=m.get("vision_width", 48), text_width=m.get("text_width", 32)
    )
  elif m.vision in VISION:
    branches = 2 if m.task == "nlvr" else 1  # NLVR2: one cross-attention branch per image (reference s.7)
    base = BlipConfig(task=m.task, vision=VISION[m.vision](m.image_size), text=TextConfig(num_cross_branches=branches))
  else:
    raise ValueError(f"config.model.vision={m.vision!r}: must be one of {sorted(VISION) + ['tiny']}")
  vision = dataclasses.replace(base.vision, drop_path_rate=m.drop_path_rate)
  base = base.replace(text=dataclasses.replace(base.text, share=m.get("share", "all_but_sa")))
  if tokenizer is not None:
    sp = tokenizer.special
    base = base.replace(
      text=dataclasses.replace(
        base.text,
        vocab_size=tokenizer.vocab_size,
        pad_token_id=sp.pad,
        cls_token_id=sp.cls,
        sep_token_id=sp.sep,
        bos_token_id=sp.dec,
        enc_token_id=sp.enc,
      )
    )
  return base.replace(
    vision=vision,
    dtype=m.dtype,
    vision_remat=m.vision_remat,
    vision_remat_blocks=m.get("vision_remat_blocks", 0),
    text_remat=m.text_remat,
  )


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


def prompt_length(cfg, tokenizer=None) -> int:
  """Decoder positions of [DEC] + config.prompt (captioning), masked from the LM targets; 0 without a
  prompt. The official count: len(tokenizer(prompt).input_ids) - 1 ([CLS] prompt, no [SEP])."""
  prompt = cfg.get("prompt", "")
  if not isinstance(prompt, str):
    raise ValueError(f"config.prompt={prompt!r}: must be a string")
  if not prompt:
    return 0
  if tokenizer is None:
    raise ValueError("config.prompt needs the run's tokenizer to count its tokens")
  return 1 + len(tokenizer.tokenize_ids(prompt))


def objective(cfg, mesh: tuple[int, int, int], tokenizer=None) -> Objective:
  """config.objective -> Objective, checked against the batch, the mesh and the task."""
  o, b, accum = cfg.objective, cfg.global_batch, cfg.accum_steps
  data_shards = mesh[0] * mesh[1]
  if b % data_shards:
    raise ValueError(f"config.global_batch={b} is not divisible by the {data_shards} data shards of config.mesh={mesh}")
  if accum < 1 or b % accum:
    raise ValueError(f"global batch {b} is not divisible by config.accum_steps={accum}")
  if cfg.get("prompt") and cfg.model.task != "caption":
    raise ValueError(f"config.prompt={cfg.prompt!r} is for task 'caption' (this run is {cfg.model.task!r})")
  if "momentum" not in TASKS[cfg.model.task]:  # caption, vqa, nlvr: no momentum encoder, queues or negatives
    length = prompt_length(cfg, tokenizer)
    if length and length >= cfg.text_length - 1:
      raise ValueError(
        f"config.prompt={cfg.prompt!r} takes {length} of the config.text_length={cfg.text_length} positions: "
        "no room for the caption"
      )
    return Objective(queue_size=0, label_smoothing=o.get("label_smoothing", 0.1), prompt_length=length)
  obj = Objective(
    queue_size=o.queue_size,
    momentum=o.momentum,
    alpha=o.alpha,
    alpha_ramp_steps=int(math.ceil(o.alpha_ramp_epochs * steps_per_epoch(cfg))),
    label_smoothing=o.label_smoothing,
    negatives=o.negatives,
    negative_groups=data_shards if o.negatives == "local" else 1,
    multi_positive=cfg.model.task == "retrieval",
    distinct_text_negatives=bool(o.get("distinct_text_negatives", False)),
    shuffled_text_negatives=bool(o.get("shuffled_text_negatives", False)),
  )
  if "momentum" not in TASKS[cfg.model.task]:
    raise ValueError(f"config.model.task={cfg.model.task!r} has no momentum encoder: use pretrain or retrieval")
  if obj.queue_size % b:
    raise ValueError(
      f"config.queue_size={obj.queue_size} is not a multiple of the global batch "
      f"{b}: the queue must wrap exactly (reference s.5 step 4)"
    )
  if obj.negatives not in ("local", "global"):
    raise ValueError(f"config.negatives={obj.negatives!r}: must be 'local' or 'global'")
  if obj.negatives == "local" and (b // accum) % obj.negative_groups:
    raise ValueError(f"(micro)batch {b // accum} is not divisible by config.negative_groups={obj.negative_groups}")
  if (obj.negatives == "global" or obj.multi_positive) and cfg.model.task != "retrieval":
    raise ValueError("config.negatives='global' and multi_positive need image ids: task 'retrieval'")
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


def sharding_rules(cfg) -> tuple[tuple[str, Any], ...]:
  """config.sharding_rules (logical axis -> mesh axes; the table lives in the experiment config) as
  Flax expects it."""
  rules = cfg.get("sharding_rules")
  if not rules:
    raise ValueError(
      "config.sharding_rules is missing: (logical axis, mesh axes) pairs, e.g. experiments/common.py SHARDING_RULES"
    )
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)

"""What the one trainer runs, per `config.model.task`: its state, its step, its evaluator and the metric
that picks the best checkpoint. The trainer, `blip_jax.aot` and `python -m blip_jax.evaluate` reach a
task only through `get(name)`.

  pretrain   ITC + ITM + LM with momentum distillation and queues (reference s.5)
  retrieval  ITC (multi-positive by image id) + ITM (id-masked hard negatives) (reference s.7)
  caption    LM with the prompt masked, label smoothing 0.1 (reference s.7)
  vqa        answer-decoder LM weighted by answer frequency (reference s.7)
  nlvr       two-image classification with two cross-attention branches (reference s.7)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

_MODULES = {
  "pretrain": "blip_jax.tasks.pretrain",
  "retrieval": "blip_jax.tasks.retrieval",
  "caption": "blip_jax.tasks.caption",
  "vqa": "blip_jax.tasks.vqa",
  "nlvr": "blip_jax.tasks.nlvr",
}


@dataclasses.dataclass(frozen=True)
class Task:
  """One task's parts. `exp` is the validated `train.build.Experiment`.

  init_state(exp, rng) -> state dict (plain pytree; see each task's module docstring)
  make_step(exp) -> step(state, batch) -> (state, metrics): pure, jitted by the caller
  losses(model) -> names of the loss metrics the step reports (checked finite every log boundary)
  step_flops(exp) -> analytic FLOPs of one step (for TFLOP/s and MFU)
  evaluator: "module:Class" of its evaluator, built as Class(exp, tokenizer, mesh, out_dir) and called
    as `evaluate(params, step) -> (metrics, samples)` (imported only when a run evaluates)
  best_metric: the evaluator metric (higher is better) that picks the best checkpoint, or None
  batch_keys: the arrays a training batch must hold (AOT compilation without data builds these)
  """

  name: str
  init_state: Callable[[Any, Any], dict]
  make_step: Callable[[Any], Callable]
  losses: Callable[[Any], tuple[str, ...]]
  step_flops: Callable[[Any], float]
  evaluator: str
  best_metric: str | None
  batch_keys: tuple[str, ...]


def names() -> tuple[str, ...]:
  """The tasks the trainer runs."""
  return tuple(_MODULES)


def get(name: str) -> Task:
  """The Task for config.model.task `name`. Raises ValueError naming the trainable tasks."""
  if name not in _MODULES:
    raise ValueError(f"config.model.task={name!r}: the trainer runs {names()}")
  return importlib.import_module(_MODULES[name]).TASK


# Evaluators a config may pick instead of its task's own (config.eval.evaluator), with the tasks whose
# models they need.
_EVALUATORS = {"video_retrieval": ("blip_jax.evaluate.video_retrieval:VideoRetrieval", ("retrieval", "pretrain"))}


def make_evaluator(exp, tokenizer, mesh, out_dir: str | None = None):
  """config.eval.evaluator ("" = the task's own, e.g. "video_retrieval") built for `exp`."""
  name = exp.cfg.eval.get("evaluator", "")
  where = exp.task.evaluator
  if name:
    if name not in _EVALUATORS:
      raise ValueError(f"config.eval.evaluator={name!r}: must be '' (the task's) or one of {sorted(_EVALUATORS)}")
    where, task_names = _EVALUATORS[name]
    if exp.task.name not in task_names:
      raise ValueError(f"config.eval.evaluator={name!r} needs a model of task {task_names}, not {exp.task.name!r}")
  module, cls = where.split(":")
  return getattr(importlib.import_module(module), cls)(exp, tokenizer, mesh, out_dir)

"""The model of the best evaluation so far, kept beside the latest checkpoints (which rotate):
workdir/best/ is a blip_jax checkpoint directory like workdir/model/, plus best.json {"step", "metric",
"value", "metrics"}. It is replaced atomically (written to best.tmp, then renamed), so a run killed
mid-save leaves the previous best intact; a resumed run reads best.json and only replaces the model
with a better one."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from typing import Callable

import jax


class BestModel:
  def __init__(self, workdir: str, metric: str | None, log: Callable[[str], None] = logging.info):
    """metric: the evaluation metric to maximise (the task's best_metric); None keeps nothing."""
    self.directory, self.metric, self.log = os.path.join(workdir, "best"), metric, log
    self.value, self.step = -math.inf, None
    path = os.path.join(self.directory, "best.json")
    if metric is not None and os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      if record.get("metric") == metric:
        self.value, self.step = float(record["value"]), int(record["step"])

  def update(self, step: int, metrics: dict, save: Callable[[str], object]) -> bool:
    """Save the model (`save(directory)`) when metrics[metric] beats the best so far. Returns whether
    it did. Raises KeyError naming the metric when the evaluator does not report it."""
    if self.metric is None:
      return False
    if self.metric not in metrics:
      raise KeyError(f"the best-model metric {self.metric!r} is not among the evaluation's {sorted(metrics)}")
    value = float(metrics[self.metric])
    if not value > self.value:
      return False
    tmp = self.directory + ".tmp"
    if jax.process_index() == 0:
      shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)  # every process writes its shards; process 0 the rest
    if jax.process_index() == 0:
      record = {
        "step": step,
        "metric": self.metric,
        "value": value,
        "metrics": {k: float(v) for k, v in metrics.items()},
      }
      with open(os.path.join(tmp, "best.json"), "w") as f:
        json.dump(record, f, indent=2)
      old = self.directory + ".old"
      shutil.rmtree(old, ignore_errors=True)
      if os.path.exists(self.directory):
        os.replace(self.directory, old)
      os.replace(tmp, self.directory)
      shutil.rmtree(old, ignore_errors=True)
    previous = "" if self.step is None else f" (was {self.value:.4f} at step {self.step})"
    self.value, self.step = value, step
    self.log(f"best {self.metric} so far: {value:.4f} at step {step}{previous}; model saved to {self.directory}")
    return True

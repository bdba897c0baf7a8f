"""Training metrics to stdout, `workdir/metrics.jsonl` and TensorBoard event files (tensorboardX, no
tensorflow). Only process 0 writes; the others get a writer that drops everything."""

from __future__ import annotations

import json
import os
import sys
import time


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    self._tty = enabled and sys.stdout.isatty()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=10)

  def write(self, step: int, metrics: dict, prefix: str = "train", suffix: str = "") -> None:
    """One record; floats rounded for the console, exact in JSONL and TensorBoard."""
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": prefix, "time": time.time(), **metrics}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
    text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    print(
      ("\r\033[K" if self._tty else "") + f"[{prefix}] step {step}: {text}" + (f"  {suffix}" if suffix else ""),
      flush=True,
    )

  def progress(self, step: int, total: int, seconds_per_step: float) -> None:
    """A one-line progress bar with ETA, on interactive terminals only."""
    if not self._tty:
      return
    width = 30
    done = int(width * step / max(total, 1))
    eta = seconds_per_step * (total - step)
    sys.stdout.write(f"\r\033[K[{'#' * done}{'.' * (width - done)}] {step}/{total}  ETA {format_eta(eta)}")
    sys.stdout.flush()

  def text(self, line: str) -> None:
    if self.enabled:
      print(("\r\033[K" if self._tty else "") + line, flush=True)

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def _fmt(v: float) -> str:
  if v != v or abs(v) >= 1e4 or (0 < abs(v) < 1e-3):
    return f"{v:.3e}"
  return f"{v:.4f}"


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"

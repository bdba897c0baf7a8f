"""Training metrics to stdout, `workdir/metrics.jsonl` and TensorBoard event files (tensorboardX, no
tensorflow). Only process 0 writes; the others get a writer that drops everything.

metrics.jsonl stays valid JSONL whatever happens: each record is one `write` of a whole line to a file
opened for appending, and a torn last line (a run killed mid-write, a full disk) is cut off when the
next run opens the file, with a message.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    self._tty = enabled and sys.stdout.isatty()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    torn = repair_jsonl(path)
    if torn:
      print(f"{path}: removed a torn last line ({torn} bytes) left by an interrupted write", flush=True)
    self._jsonl = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=10)

  def write(self, step: int, metrics: dict, prefix: str = "train", suffix: str = "") -> None:
    """One record; floats rounded for the console, exact in JSONL and TensorBoard."""
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": step, "split": prefix, "time": time.time(), **metrics}) + "\n"
    os.write(self._jsonl, line.encode())  # one append of the whole line
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
    text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    print(
      ("\r\033[K" if self._tty else "") + f"[{prefix}] step {step}: {text}" + (f"  {suffix}" if suffix else ""),
      flush=True,
    )

  def samples(self, step: int, samples: list, prefix: str = "eval") -> None:
    """A few (normalised image (S, S, 3), text) pairs to TensorBoard: the image with the text as its
    tag's caption (generated captions, top retrieved texts)."""
    if self._tb is None or not samples:
      return
    from blip_jax.data.transforms import MEAN, STD

    for n, (image, text) in enumerate(samples):
      pixels = np.clip(np.asarray(image, np.float32) * np.asarray(STD) + np.asarray(MEAN), 0.0, 1.0)
      self._tb.add_image(f"{prefix}/sample_{n}", pixels, step, dataformats="HWC")
      self._tb.add_text(f"{prefix}/sample_{n}", text, step)

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
    if self._jsonl is not None:
      os.close(self._jsonl)
      self._jsonl = None
    if self._tb:
      self._tb.close()
      self._tb = None


def repair_jsonl(path: str) -> int:
  """Cut a last line that does not end in a newline (an interrupted write); returns the bytes removed."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return 0
    pos = size - 1
    while pos > 0:  # back to the newline before the torn line
      step = min(4096, pos)
      f.seek(pos - step)
      chunk = f.read(step)
      cut = chunk.rfind(b"\n")
      if cut != -1:
        keep = pos - step + cut + 1
        break
      pos -= step
    else:
      keep = 0
    f.truncate(keep)
    return size - keep


def _fmt(v: float) -> str:
  if v != v or abs(v) >= 1e4 or (0 < abs(v) < 1e-3):
    return f"{v:.3e}"
  return f"{v:.4f}"


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"

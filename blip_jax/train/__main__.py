"""python -m blip_jax.train --config experiments/demo.py[:variant] --workdir DIR [--config.key=value ...]

Trains (or resumes) the experiment in DIR. See README.md and blip_jax/train/trainer.py.

An anticipated failure (bad config or data, non-finite loss, a busy workdir, a full disk, a checkpoint
that does not restore) prints one error line and where the run can resume from, and exits 1; pass
--verbosity=0 (or set BLIP_JAX_TRACEBACK=1) for the full traceback.
"""

import io
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from blip_jax.data.sources import DataError
from blip_jax.flag_parsing import parse_flags
from blip_jax.interop import CheckpointError
from blip_jax.train.checkpoints import committed_steps
from blip_jax.train.trainer import NonFiniteLoss, train
from blip_jax.train.workdir_lock import WorkdirBusy

config_flags.DEFINE_config_file("config", None, "experiment config file, optionally with :variant", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics, TensorBoard events and the resolved config")
flags.mark_flags_as_required(["config", "workdir"])

# What a run can be stopped by without a bug in blip_jax: reported in one line.
ANTICIPATED = (ValueError, DataError, CheckpointError, NonFiniteLoss, WorkdirBusy, OSError, RuntimeError)


class HideTracebacks(io.TextIOBase):
  """stderr without traceback blocks: when a save fails (a full disk, say), orbax's and tensorstore's
  background threads print hundreds of them, interleaved; the one line that matters is printed by
  `main`. Counts what it hid; --verbosity=0 or BLIP_JAX_TRACEBACK=1 shows everything."""

  def __init__(self, stream):
    self._stream, self._pending, self.hidden = stream, "", 0
    self._skipping = self._after_dropped = False
    self._lock = threading.Lock()

  def write(self, text: str) -> int:
    with self._lock:
      *lines, self._pending = (self._pending + text).split("\n")
      for line in lines:
        self._line(line)
    return len(text)

  def _line(self, line: str) -> None:
    frame = line.startswith(('  File "', "    "))  # our own output is never indented this deep
    if line.startswith("Traceback (most recent call last):"):
      self._skipping, self._after_dropped, self.hidden = True, True, self.hidden + 1
    elif self._skipping or frame:
      if self._skipping and not frame and line.strip() and not line.startswith(("During handling", "The above")):
        self._skipping = False  # the exception line ends the block
      self._after_dropped = True
    elif self._after_dropped and _EXCEPTION_LINE.match(line):  # a block's last line, after interleaving
      self._after_dropped = False
    elif not line.startswith(("Exception in thread", "Exception ignored")):
      self._after_dropped = False
      self._stream.write(line + "\n")

  def flush(self) -> None:
    self._stream.flush()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def _cause(e: BaseException) -> str:
  """The error's message; when a library wrapped a whole remote traceback into it, its last line."""
  text = str(e)
  if "Traceback (most recent call last)" in text:
    text = [line for line in text.splitlines() if line.strip()][-1]
  return text


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  verbose = flags.FLAGS["verbosity"].present or os.environ.get("BLIP_JAX_TRACEBACK") == "1"
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  workdir = flags.FLAGS.workdir
  real_stderr = sys.stderr
  if not verbose:
    sys.stderr = HideTracebacks(real_stderr)
    logging.get_absl_handler().python_handler.stream = sys.stderr  # library errors logged with exc_info
  try:
    train(flags.FLAGS.config, workdir)
  except ANTICIPATED as e:
    if verbose:
      raise
    print(f"error: {type(e).__name__}: {_cause(e)}", file=real_stderr)  # past the filter: always shown
    if not isinstance(e, WorkdirBusy):
      steps = committed_steps(workdir)
      where = (
        f"the last checkpoint on disk is step {steps[-1]} (rerun the same command to resume from it)"
        if steps
        else "no checkpoint was written"
      )
      print(f"the run stopped; {where}. --verbosity=0 shows the traceback", file=real_stderr)
    hidden = getattr(sys.stderr, "hidden", 0)
    if hidden:
      print(f"({hidden} tracebacks from library threads hidden; --verbosity=0 shows them)", file=real_stderr)
    return 1
  except BaseException:  # a bug: its traceback is what the user needs
    sys.stderr = real_stderr
    raise
  return 0


def run():
  """Console entry point (`blip-jax-train`)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()

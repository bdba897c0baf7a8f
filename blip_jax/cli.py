"""What the inference CLIs (features, search, score, classify) share: the model flags, loading, a
progress line, and turning anticipated errors into one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import sys
import time


def model_arguments(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
  p.add_argument(
    "--checkpoint", required=checkpoint_required, help="blip_jax directory, Salesforce .pth or HF directory"
  )
  p.add_argument("--task", help="the model to load from the checkpoint (default: its own; pretrain narrows to any)")
  p.add_argument("--tokenizer", help="vocab.txt / tokenizer.model (default: the one beside the checkpoint)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--batch", type=int, default=32, help="images or texts per device pass (all local devices)")


def load_model(a: argparse.Namespace, **kw):
  import blip_jax

  return blip_jax.load(a.checkpoint, a.task, a.dtype, tokenizer=a.tokenizer, batch_size=a.batch, **kw)


def run(main, argv=None) -> int:
  """main(argv) -> exit status, with anticipated errors turned into one line on stderr and status 1
  (each CLI's entry point raises SystemExit with it)."""
  from blip_jax.data.sources import DataError
  from blip_jax.interop import CheckpointError

  try:
    return main(sys.argv[1:] if argv is None else argv)
  except (ValueError, DataError, CheckpointError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


class Progress:
  """`done/total` with a bar and rate on stderr: redrawn in place on a terminal, every 10% otherwise."""

  def __init__(self, total: int, what: str):
    self.total, self.what, self.t0, self.last = max(total, 1), what, time.time(), -1
    self.tty = sys.stderr.isatty()

  def update(self, done: int) -> None:
    tenth = 10 * done // self.total
    if not self.tty and tenth == self.last and done < self.total:
      return
    self.last = tenth
    rate = done / max(time.time() - self.t0, 1e-9)
    bar = "#" * (30 * done // self.total)
    line = f"[{bar:<30}] {done}/{self.total} {self.what} ({rate:.1f}/s)"
    print(
      ("\r" + line) if self.tty else line,
      end="" if self.tty and done < self.total else "\n",
      file=sys.stderr,
      flush=True,
    )

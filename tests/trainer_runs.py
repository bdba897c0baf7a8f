"""Running the real training CLI from tests: the smoke config as a subprocess, its per-step losses, and
waiting for a step (shared by the trainer and reliability tests; the uninterrupted `baseline` run is a
session fixture in conftest.py)."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10


def losses(workdir) -> dict[int, dict]:
  """The last train record per step (a resumed run appends to the same file)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r["split"] == "train":
        out[r["step"]] = {k: v for k, v in r.items() if k.startswith("loss")}
  return out


def cli(workdir, *overrides, wait=True, config="experiments/demo.py:smoke"):
  cmd = [
    sys.executable,
    "-m",
    "blip_jax.train",
    "--config",
    config,
    "--workdir",
    str(workdir),
    f"--config.total_steps={STEPS}",
    "--config.log_every=1",
    *overrides,
  ]
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="",  # one CPU device, like a laptop
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = p.communicate(timeout=600)
    return p.returncode, out
  return p


def wait_for_step(proc, workdir, step, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.exists(path) and max(losses(workdir), default=0) >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
    time.sleep(0.05)
  raise AssertionError("timed out")

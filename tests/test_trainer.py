"""The trainer end to end on the demo config's smoke variant: the real CLI, exact resume after SIGKILL,
SIGTERM saves and exits 0, a non-finite loss stops the run and the last checkpoint continues it,
restoring onto another mesh, and bad configs failing before compilation with the key named."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from blip_jax.train.trainer import NonFiniteLoss, train
from experiments import demo
from tests.trainer_runs import ROOT, STEPS, cli, losses, wait_for_step


def test_cli_runs_the_demo_end_to_end(baseline):
  wd, out = baseline
  assert "[eval] step 10" in out and "token_accuracy" in out
  assert sorted(losses(wd)) == list(range(1, STEPS + 1))
  assert json.load(open(wd / "config.json"))["total_steps"] == STEPS
  assert sorted(int(d) for d in os.listdir(wd / "checkpoints")) == [6, 8, 10]  # keep_checkpoints = 3
  assert os.listdir(wd / "checkpoints" / "10" / "data")  # the data iterator position rides along
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tb"))


def test_sigkill_then_resume_is_bitwise_identical(baseline, tmp_path):
  proc = cli(tmp_path, "--config.checkpoint_every=2", wait=False)
  wait_for_step(proc, tmp_path, 4)
  t0 = time.time()  # kill only once a checkpoint is finalised (async saves finish a moment later)
  while not any(d.isdigit() for d in os.listdir(tmp_path / "checkpoints")) and time.time() - t0 < 120:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(losses(tmp_path))
  assert killed_at < STEPS
  rc, out = cli(tmp_path, "--config.checkpoint_every=2")
  assert rc == 0 and "resumed from" in out, out
  assert losses(tmp_path) == losses(baseline[0])  # every step, bitwise


def test_sigterm_saves_the_current_step_and_exits_0(tmp_path):
  proc = cli(tmp_path, "--config.checkpoint_every=100", wait=False)
  wait_for_step(proc, tmp_path, 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  last = max(losses(tmp_path))
  assert f"SIGTERM: saved step {last}" in out
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")) == [last]


def _cfg(**kw):
  c = demo.get_config("smoke")
  c.total_steps = STEPS
  c.global_batch = 16
  c.objective.queue_size = 32
  c.log_every = 1
  c.tensorboard = False
  c.async_checkpoints = False
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.mark.slow  # ~105 s; the fast suite checks the NaN stop through the CLI (test_reliability)
def test_non_finite_loss_stops_and_last_checkpoint_continues(tmp_path, devices):
  ref = tmp_path / "ref"
  train(_cfg(mesh=(2, 4, 1), checkpoint_every=100), str(ref))  # (orbax saves cost ~3 s each here)
  run = tmp_path / "run"
  with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 5: loss=nan.*last checkpoint \(4\) is intact"):
    train(_cfg(mesh=(2, 4, 1), debug_nan_at_step=5, checkpoint_every=4), str(run))
  assert sorted(int(d) for d in os.listdir(run / "checkpoints")) == [4]
  train(_cfg(mesh=(2, 4, 1), checkpoint_every=100), str(run))  # resumes from 4
  want, got = losses(ref), losses(run)
  assert got == want


@pytest.mark.slow  # ~80 s: three trainer runs; the fast suite keeps its 15-minute budget
def test_restore_onto_another_mesh(tmp_path, devices):
  first = tmp_path / "a"
  train(_cfg(mesh=(8, 1, 1), total_steps=4, checkpoint_every=4), str(first))
  second = tmp_path / "b"
  shutil.copytree(first, second)
  same = losses(train_and_read(_cfg(mesh=(8, 1, 1), checkpoint_every=100), first))
  other = losses(train_and_read(_cfg(mesh=(2, 4, 1), checkpoint_every=100), second))
  assert sorted(other) == list(range(1, STEPS + 1))
  for s in range(5, STEPS + 1):
    for k in same[s]:
      assert abs(other[s][k] - same[s][k]) <= 1e-5 * max(1.0, abs(same[s][k])), (s, k)


def train_and_read(cfg, wd):
  train(cfg, str(wd))
  return wd


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("global_batch", 12, r"config.global_batch=12 is not divisible by the 8 data shards"),
    ("objective.queue_size", 40, r"queue_size=40 .*multiple of .*16"),
    ("model.image_size", 30, r"image_size=30 is not a multiple of .*patch_size=8"),
    ("mesh", (3, 1, 1), r"config.mesh=\(3, 1, 1\) needs 3 devices, 8 available"),
    ("log_every", 0, r"config.log_every=0: must be >= 1"),
    ("optimizer.schedule", "linear", r"config.optimizer.schedule='linear'"),
    ("data.tokenizer", {"type": "bpe"}, r"config.data.tokenizer.type='bpe'"),
  ],
)
def test_bad_config_fails_before_compiling(tmp_path, devices, key, value, message):
  with pytest.raises(ValueError, match=message):
    train(_cfg(**{key: value}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_caption_cli_on_the_trained_model(baseline, tmp_path):
  """The finished run's model directory (a pretrain checkpoint, narrowed to the captioner) captions
  images through the real CLI, beam search and sampling; a missing image is reported, not fatal."""
  from blip_jax.data.synthetic import SyntheticWorld

  wd, _ = baseline
  world = SyntheticWorld(2, image_size=32)
  paths = []
  for i in range(2):
    paths.append(str(tmp_path / f"{i}.jpg"))
    world[i][0].save(paths[-1])
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  for extra in (["--beams", "2"], ["--sample", "--num-samples", "2"]):
    p = subprocess.run(
      [
        sys.executable,
        "-m",
        "blip_jax.caption",
        "--checkpoint",
        str(wd / "model"),
        "--max-length",
        "10",
        "--min-length",
        "6",
        "--prompt",
        "",
        *extra,
        *paths,
        str(tmp_path / "missing.jpg"),
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert p.returncode == 1, p.stderr  # 1: one image could not be read
    assert "missing.jpg: image not found" in p.stderr
    lines = p.stdout.strip().split("\n")
    assert len(lines) == 2 * (2 if "--sample" in extra else 1)
    assert all(line.split("\t")[0] in paths and len(line.split("\t")[1].split()) >= 1 for line in lines), lines

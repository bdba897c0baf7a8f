"""Multi-host on one machine (tests/multihost.py): 2 processes x 4 CPU devices run the real CLI as one
8-device mesh and give the same results as 1 process x 8 devices; preemption, a dead process, checkpoints
across process counts and the usual pod mistakes. The training cases are `slow` (about 5 minutes in
all); the mistakes fail before compiling and run in the default suite."""

import os
import signal
import time

import numpy as np
import pytest

from blip_jax import interop
from tests.multihost import launch, wait
from tests.trainer_runs import losses

STEPS = (
  "--config.total_steps=10",
  "--config.log_every=1",
  "--config.global_batch=16",
  "--config.objective.queue_size=32",
  "--config.preemption_check_every=1",
)


def _ok(results):
  for rc, out in results:
    assert rc == 0, out[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  wd = tmp_path_factory.mktemp("one_by_eight")
  _ok(wait(launch(1, 8, wd, *STEPS, "--config.checkpoint_every=4")))
  return wd


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
  wd = tmp_path_factory.mktemp("two_by_four")
  t0 = time.time()
  results = wait(launch(2, 4, wd, *STEPS, "--config.checkpoint_every=4"))
  _ok(results)
  print(f"2 x 4 run: {time.time() - t0:.0f} s")
  return wd, results


def _eval(wd):
  import json

  return [json.loads(line) for line in open(wd / "metrics.jsonl") if '"eval"' in line][-1]


@pytest.mark.slow
def test_two_by_four_equals_one_by_eight(single, pod):
  wd, results = pod
  want, got = losses(single), losses(wd)
  assert sorted(got) == list(range(1, 11))
  for step in want:
    for k in want[step]:
      assert abs(got[step][k] - want[step][k]) <= 1e-5 * max(1.0, abs(want[step][k])), (step, k)
  a, b = interop.load(str(single / "model")), interop.load(str(wd / "model"))
  for (path, x), (_, y) in zip(interop.keymap.flatten(a.params), interop.keymap.flatten(b.params)):
    x, y, name = np.array(x), np.array(y), "/".join(path)
    # Attention key biases have an exactly zero true gradient (softmax ignores a constant shift per query),
    # so what Adam sees there is float32 rounding noise, normalised to full-size steps: reduction order
    # (one process or two) legitimately changes it. Every other parameter must agree to 1e-5.
    if name.endswith("attn/qkv/bias"):
      d = x.shape[0] // 3
      key = slice(d, 2 * d)
      np.testing.assert_allclose(y[key], x[key], atol=1e-3, err_msg=name)
      x[key] = y[key] = 0
    elif name.endswith("self/key/bias"):
      np.testing.assert_allclose(y, x, atol=1e-3, err_msg=name)
      continue
    np.testing.assert_allclose(y, x, atol=1e-5, err_msg=name)
  ea, eb = _eval(single), _eval(wd)
  for k in ("i2t_r1", "t2i_r1", "token_accuracy", "pairs"):
    assert abs(ea[k] - eb[k]) <= 1e-6, k
  assert "[train]" not in results[1][1]  # only process 0 logs


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  procs = launch(2, 4, tmp_path, *STEPS, "--config.total_steps=200", "--config.checkpoint_every=100")
  t0 = time.time()
  while not (tmp_path / "metrics.jsonl").exists() or max(losses(tmp_path), default=0) < 3:
    assert time.time() - t0 < 600 and all(p.poll() is None for p in procs), "run ended early"
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  results = wait(procs)
  _ok(results)
  stopped = max(losses(tmp_path))
  assert f"saved step {stopped}" in results[0][1]
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [stopped]


@pytest.mark.slow
def test_dead_process_ends_the_other_then_both_resume(single, tmp_path):
  procs = launch(2, 4, tmp_path, *STEPS, "--config.checkpoint_every=2", heartbeat_timeout=5)
  t0 = time.time()
  while not (tmp_path / "checkpoints").exists() or not any(d.isdigit() for d in os.listdir(tmp_path / "checkpoints")):
    assert time.time() - t0 < 600 and all(p.poll() is None for p in procs), "run ended early"
    time.sleep(0.1)
  procs[1].kill()
  t_kill = time.time()
  rc0, out0 = wait(procs[:1], timeout=180)[0]
  waited = time.time() - t_kill
  assert rc0 != 0 and waited < 120, (rc0, waited, out0[-3000:])
  print(f"process 0 ended {waited:.0f} s after process 1 was killed (rc {rc0})")
  _ok(wait(launch(2, 4, tmp_path, *STEPS, "--config.checkpoint_every=2")))
  got, want = losses(tmp_path), losses(single)
  for step in want:
    for k in want[step]:
      assert abs(got[step][k] - want[step][k]) <= 1e-5 * max(1.0, abs(want[step][k])), (step, k)


@pytest.mark.slow
def test_checkpoints_cross_process_counts(pod, single, tmp_path):
  import shutil

  two = tmp_path / "from_two"
  shutil.copytree(pod[0], two)
  for d in os.listdir(two / "checkpoints"):
    if d.isdigit() and int(d) > 4:
      shutil.rmtree(two / "checkpoints" / d)
  _ok(wait(launch(1, 8, two, *STEPS, "--config.checkpoint_every=4")))  # 2 processes' checkpoint, 1 process
  one = tmp_path / "from_one"
  shutil.copytree(single, one)
  for d in os.listdir(one / "checkpoints"):
    if d.isdigit() and int(d) > 4:
      shutil.rmtree(one / "checkpoints" / d)
  _ok(wait(launch(2, 4, one, *STEPS, "--config.checkpoint_every=4")))  # and the other way
  want = losses(single)
  for wd in (two, one):  # the same global batches follow, so the same losses as the uninterrupted run
    got = losses(wd)
    assert max(got) == 10
    for step in range(5, 11):
      for k in want[step]:
        assert abs(got[step][k] - want[step][k]) <= 1e-5 * max(1.0, abs(want[step][k])), (wd.name, step, k)


@pytest.mark.parametrize("case", ["workdir", "config", "batch"])
def test_pod_mistakes_are_named(tmp_path, case):
  if case == "workdir":
    results = wait(launch(2, 4, [tmp_path / "a", tmp_path / "b"], *STEPS))
    message = "is not visible to process(es) [1]"
  elif case == "config":
    results = wait(launch(2, 4, tmp_path, *STEPS, per_process={1: ["--config.optimizer.peak_lr=0.5"]}))
    message = "process(es) [1] run a different config"
  else:
    results = wait(launch(2, 4, tmp_path, *STEPS, "--config.global_batch=12", "--config.objective.queue_size=24"))
    message = "config.global_batch=12 is not divisible by the 8 data shards"
  assert all(rc != 0 for rc, _ in results), results
  assert any(message in out for _, out in results), [out[-2000:] for _, out in results]
  assert not any("Traceback" in out for _, out in results)

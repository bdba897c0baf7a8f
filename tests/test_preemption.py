"""Preemption: a signal on one process stops every process at the same step (the agreement the
trainer runs before its collective save), and a signal on a single process stops it at once."""

import os
import signal

import numpy as np

from blip_jax.train.distributed import Preemption


def test_signal_on_one_of_two_processes_stops_both_at_the_same_step():
  procs = []
  gather = lambda _: np.array([p.requested is not None for p in procs], np.int32)  # all-gather of flags
  procs += [Preemption(check_every=5, gather=gather, num_processes=2) for _ in range(2)]
  stopped = {}
  for step in range(1, 21):
    if step == 7:
      procs[1].handle(signal.SIGTERM)  # the SIGTERM handler of process 1 only
    for i, p in enumerate(procs):
      if i not in stopped and p.should_stop(step):
        stopped[i] = step
  assert stopped == {0: 10, 1: 10}  # the first agreement point after the signal, on both
  assert procs[1].requested == "SIGTERM" and "another process" in procs[0].requested


def test_single_process_stops_after_the_current_step():
  with Preemption(check_every=10, num_processes=1) as p:
    assert not p.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.should_stop(2) and p.requested == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is not p.handle  # handlers restored

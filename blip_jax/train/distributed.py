"""What running as several processes (a pod's hosts) takes: joining the job, checking that every process
sees the same workdir and config, and agreeing on when to stop after a preemption signal."""

from __future__ import annotations

import os
import signal
from typing import Callable

import jax
import numpy as np


class Preemption:
  """SIGTERM / SIGINT set a per-process flag; `should_stop(step)` turns the flags of all processes
  into one decision, so every host of a pod stops (and enters the collective save) at the same step.

  Single process: the flag itself, read after every step. Several processes: the flags are
  all-gathered every `check_every` steps (the same steps on every process, so they agree); a signal
  that arrives between checks is honoured at the next one. `gather` maps this process's flag (an int)
  to every process's (an array); the default is jax's process_allgather.
  """

  def __init__(
    self,
    check_every: int = 1,
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
    num_processes: int | None = None,
  ):
    self.requested: str | None = None
    self.check_every = max(1, check_every)
    self.num_processes = jax.process_count() if num_processes is None else num_processes
    self._gather = gather or _process_allgather
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self.handle)
    return self

  def handle(self, signum, frame=None):
    self.requested = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    if self.num_processes == 1:
      return self.requested is not None
    if step % self.check_every:
      return False
    flags = np.asarray(self._gather(np.int32(self.requested is not None)))
    if flags.any() and self.requested is None:
      self.requested = "a stop requested on another process"
    return bool(flags.any())

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _process_allgather(flag: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(flag)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment says several processes run this job: a TPU pod
  slice's hosts (detected by jax), or a launcher's JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
  JAX_PROCESS_ID (e.g. tests/multihost.py, which runs a "pod" of CPU processes on one machine with
  gloo collectives). BLIP_JAX_HEARTBEAT_TIMEOUT (seconds, default 100) bounds how long the others
  wait for a process that died."""
  env = os.environ
  num = int(env.get("JAX_NUM_PROCESSES", "1"))
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if not (num > 1 or len(hosts) > 1) or jax.distributed.is_initialized():
    return
  kw = {"heartbeat_timeout_seconds": int(env.get("BLIP_JAX_HEARTBEAT_TIMEOUT", "100"))}
  if num > 1:
    if not env.get("JAX_COORDINATOR_ADDRESS") or "JAX_PROCESS_ID" not in env:
      raise ValueError(
        "JAX_NUM_PROCESSES > 1 needs JAX_COORDINATOR_ADDRESS (host:port of process 0) and "
        "JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES - 1)"
      )
    kw.update(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=num, process_id=int(env["JAX_PROCESS_ID"])
    )
    if env.get("JAX_PLATFORMS", "") == "cpu":  # CPU devices of several processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)


def check_processes_agree(cfg, workdir: str) -> None:
  """On several processes: every process sees the same workdir (process 0 leaves a token there the
  others must find) and runs the same config. Raises ValueError naming the process that differs."""
  if jax.process_count() == 1:
    return
  import hashlib

  from jax.experimental import multihost_utils

  token = os.path.join(workdir, f".process-check-{int(multihost_utils.broadcast_one_to_all(np.int32(os.getpid())))}")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    open(token, "w").close()
  multihost_utils.sync_global_devices("blip_jax workdir token written")
  seen = multihost_utils.process_allgather(np.int32(os.path.exists(token)))
  digest = int(hashlib.sha256(cfg.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:7], 16)
  digests = multihost_utils.process_allgather(np.int32(digest))
  multihost_utils.sync_global_devices("blip_jax workdir token read")
  if jax.process_index() == 0:
    os.remove(token)
  if not seen.all():
    missing = [int(i) for i in np.flatnonzero(seen == 0)]
    raise ValueError(
      f"--workdir {workdir} is not visible to process(es) {missing}: every host must see the same "
      "directory (a shared filesystem such as NFS or gcsfuse)"
    )
  if (digests != digests[0]).any():
    differ = [int(i) for i in np.flatnonzero(digests != digests[0])]
    raise ValueError(
      f"process(es) {differ} run a different config than process 0: start every process with the "
      "same --config and overrides"
    )

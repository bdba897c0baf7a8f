"""A pod on one machine: N processes of the real `python -m blip_jax.train` CLI, each with its own CPU
devices, joined by jax.distributed (local coordinator) and gloo collectives, sharing one workdir.

  procs = launch(2, 4, workdir, "--config.total_steps=10")   # 2 processes x 4 devices = 8
  outputs = wait(procs)                                        # [(returncode, output)] per process

Used by tests/test_multihost.py; also handy by hand to reproduce a pod problem on a laptop.
"""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(
  num_processes: int,
  devices_per_process: int,
  workdir,
  *overrides,
  config="experiments/demo.py:smoke",
  heartbeat_timeout: int = 10,
  per_process=None,
):
  """Start the processes (not waited for). Returns the Popen objects, process 0 first.

  workdir: one path for all, or a list with one per process (to reproduce a workdir some host cannot
  see); per_process: {process index: [extra overrides]} (to reproduce mismatched configs)."""
  port = free_port()
  procs = []
  for i in range(num_processes):
    env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      BLIP_JAX_HEARTBEAT_TIMEOUT=str(heartbeat_timeout),
    )
    if num_processes > 1:
      env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i)
      )
    wd = workdir[i] if isinstance(workdir, (list, tuple)) else workdir
    extra = (per_process or {}).get(i, [])
    cmd = [sys.executable, "-m", "blip_jax.train", "--config", config, "--workdir", str(wd), *overrides, *extra]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def wait(procs, timeout: float = 900) -> list[tuple[int, str]]:
  """Wait for every process; kill the rest if one overruns. Returns [(returncode, output)]."""
  out = []
  for p in procs:
    try:
      text, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      text, _ = p.communicate()
      text += "\n[harness] timed out and killed"
    out.append((p.returncode, text))
  return out

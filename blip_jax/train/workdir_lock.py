"""One run per workdir: an exclusive lock on `workdir/.lock`, held for the life of the run.

The lock is an `fcntl.flock` on the file, so the kernel releases it when the holder dies however it
dies (SIGKILL included): a lock file left behind by a dead process is simply taken over, with a
message naming the process that left it. The file records who holds it (pid, host, start time), and a
second trainer on the same workdir fails at once naming that holder. On a pod only process 0 locks
(all processes of one run share the workdir).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """Context manager: `with WorkdirLock(workdir, log): ...`. Raises WorkdirBusy when another process
  holds the lock. `log(str)` receives the takeover message for a stale lock file."""

  def __init__(self, workdir: str, log=print):
    self.path = os.path.join(workdir, ".lock")
    self._log = log
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read(fd)
      os.close(fd)
      raise WorkdirBusy(
        f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}); "
        f"wait for it to finish or stop it, or use another --workdir"
      ) from None
    previous = _read(fd)
    if previous:
      self._log(f"took over the lock of a run that is no longer alive ({_describe(previous)})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing to take over
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read(fd: int) -> dict:
  try:
    data = os.pread(fd, 4096, 0)
    return json.loads(data.decode()) if data.strip() else {}
  except (OSError, ValueError):
    return {"unreadable": True}


def _describe(holder: dict) -> str:
  if not holder or holder.get("unreadable"):
    return "holder unknown"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
  return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"

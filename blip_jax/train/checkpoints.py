"""orbax checkpoints of the whole run: train state (params, EMA params, optimizer, queues, step, rng),
each process's data-iterator position (grain's orbax handler, one file per process) and the config.

Saves are asynchronous (the step loop continues while arrays are written); restoring takes the target
shardings, so a checkpoint written on one mesh restores onto another (orbax reshards). Unfinished
saves (`*.orbax-checkpoint-tmp*`, left by a killed run or a full disk) are removed when the manager
opens the directory, and `restore_latest` falls back past a damaged newest checkpoint to the newest
one that restores, saying which it skipped and why.
"""

from __future__ import annotations

import json
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp


class _IteratorPosition:
  """What grain's handler saves and restores: `get_state() -> bytes`, `set_state(bytes)`.

  The position is captured when the save starts (an async save must not read a loader that has moved
  on), and restoring hands it to the loader."""

  def __init__(self, loader=None, state: dict | None = None):
    self.loader, self.state = loader, state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.loader.restore(json.loads(state.decode() if isinstance(state, bytes) else state))

  def start_prefetch(self) -> None:  # grain's handler calls this after set_state
    pass


def committed_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in `workdir/checkpoints`, ascending (orbax names a finished save
  by its step; unfinished ones carry a tmp suffix)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def _to_disk(state: dict) -> dict:
  """Typed PRNG keys are stored as their raw uint32 data."""
  return dict(state, rng=jax.random.key_data(state["rng"]))


class Checkpointer:
  """CheckpointManager over `workdir/checkpoints` (async, keeps `max_to_keep`)."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
      ),
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, loader, config: dict) -> None:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(_to_disk(state)),
      data=grain.checkpoint.CheckpointSave(_IteratorPosition(state=loader.state())),
      config=ocp.args.JsonSave(config),
    )
    self.manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state: dict, loader) -> dict:
    """abstract_state: ShapeDtypeStructs with the target shardings (typed key for rng). The loader is
    put at the saved position; a checkpoint written by another number of processes gets the position
    of the same global batch instead (`Loader.reposition`)."""
    target = dict(abstract_state)
    rng = target["rng"]
    key_shape = jax.eval_shape(jax.random.key_data, rng)
    target["rng"] = jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype, sharding=rng.sharding)
    items = {"state": ocp.args.StandardRestore(target)}
    others = self._positions_of_other_process_count(step)
    if others is None:
      items["data"] = grain.checkpoint.CheckpointRestore(_IteratorPosition(loader=loader))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if others is not None:
      loader.reposition(step, others)
    state = dict(restored["state"])
    state["rng"] = jax.random.wrap_key_data(state["rng"])
    return state

  def _positions_of_other_process_count(self, step: int) -> list[dict] | None:
    """The data positions saved by each process when the checkpoint was written by a different number
    of processes than run now; None when it was written by as many (the usual, exact case)."""
    data = os.path.join(self.directory, str(step), "data")
    if not os.path.isdir(data) or os.path.exists(
      os.path.join(data, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    ):
      return None
    files = sorted(f for f in os.listdir(data) if f.startswith("process_") and f.endswith(".json"))
    if not files:
      return None
    positions = []
    for f in files:
      with open(os.path.join(data, f)) as fh:
        positions.append(json.load(fh))
    return positions

  def restore_latest(self, abstract_state: dict, loader, log=logging.warning) -> tuple[int, dict] | None:
    """(step, state) of the newest checkpoint that restores, or None when there is none. A checkpoint
    that fails to restore (deleted or truncated files, ...) is reported through `log` and skipped.
    Raises RuntimeError when checkpoints exist but none restores."""
    failures, bad_steps = [], []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, abstract_state, loader)
      except Exception as e:  # orbax / tensorstore raise many types for damaged files
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        failures.append(f"step {step}: {reason}")
        bad_steps.append(step)
        log(f"checkpoint {step} in {self.directory} does not restore ({reason}); trying the previous one")
        continue
      if bad_steps and jax.process_index() == 0:  # keep the damaged ones for inspection, out of the way
        for bad_step in bad_steps:
          os.replace(os.path.join(self.directory, str(bad_step)), os.path.join(self.directory, f"damaged-{bad_step}"))
          log(f"moved the damaged checkpoint to {os.path.join(self.directory, f'damaged-{bad_step}')}")
        self.manager.reload()
      return step, restored
    if failures:
      raise RuntimeError(f"no checkpoint in {self.directory} restores: " + "; ".join(failures))
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

"""orbax checkpoints of the whole run: train state (params, EMA params, optimizer, queues, step, rng),
each process's data-iterator position (grain's orbax handler, one file per process) and the config.

Saves are asynchronous (the step loop continues while arrays are written); restoring takes the target
shardings, so a checkpoint written on one mesh restores onto another (orbax reshards).
"""

from __future__ import annotations

import json
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


def _to_disk(state: dict) -> dict:
  """Typed PRNG keys are stored as their raw uint32 data."""
  return dict(state, rng=jax.random.key_data(state["rng"]))


class Checkpointer:
  """CheckpointManager over `workdir/checkpoints` (async, keeps `max_to_keep`)."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
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
    """abstract_state: ShapeDtypeStructs with the target shardings (typed key for rng)."""
    target = dict(abstract_state)
    rng = target["rng"]
    key_shape = jax.eval_shape(jax.random.key_data, rng)
    target["rng"] = jax.ShapeDtypeStruct(key_shape.shape, key_shape.dtype, sharding=rng.sharding)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=grain.checkpoint.CheckpointRestore(_IteratorPosition(loader=loader)),
      ),
    )
    state = dict(restored["state"])
    state["rng"] = jax.random.wrap_key_data(state["rng"])
    return state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

"""The blip_jax checkpoint format: an orbax directory the trainer restores (`config.init_from`).

  DST/state/        orbax StandardCheckpointer: {"params", "momentum_params"?, "queues"?}
  DST/model.json    {"format": "blip_jax", "version": 1, "config": BlipConfig.to_dict()}
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from blip_jax.interop.checkpoint import Checkpoint, CheckpointError
from blip_jax.models.config import BlipConfig

VERSION = 1


def save_native(ckpt: Checkpoint, directory: str) -> None:
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  state = {"params": ckpt.params}
  if ckpt.momentum_params is not None:
    state["momentum_params"] = ckpt.momentum_params
  if ckpt.queues is not None:
    state["queues"] = {k: np.asarray(v) for k, v in ckpt.queues.items()}
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "state"), state, force=True)
  with open(os.path.join(directory, "model.json"), "w") as f:
    json.dump({"format": "blip_jax", "version": VERSION, "config": ckpt.config.to_dict()}, f, indent=2)


def is_native(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "model.json"))


def load_native(directory: str) -> Checkpoint:
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "model.json")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(directory, "not a blip_jax checkpoint (no model.json)") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(meta_path, f"malformed json at line {e.lineno}: {e.msg}") from None
  if meta.get("format") != "blip_jax" or meta.get("version") != VERSION:
    raise CheckpointError(meta_path, f"unsupported format/version {meta.get('format')}/{meta.get('version')}")
  config = BlipConfig.from_dict(meta["config"])
  try:
    with ocp.StandardCheckpointer() as ckptr:
      state = ckptr.restore(os.path.join(directory, "state"))
  except Exception as e:  # orbax raises several types for missing/corrupt directories
    raise CheckpointError(os.path.join(directory, "state"), f"unreadable orbax state ({type(e).__name__}: {e})") from None
  state = jax.tree.map(np.asarray, state)
  queues = state.get("queues")
  if queues is not None:
    queues = dict(queues)
    queues["ptr"] = int(queues["ptr"])
  return Checkpoint(config, state["params"], state.get("momentum_params"), queues)

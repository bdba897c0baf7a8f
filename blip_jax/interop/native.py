"""The blip_jax checkpoint format: an orbax directory the trainer restores (`config.init_from`).

DST/state/        orbax StandardCheckpointer: {"params", "momentum_params"?, "queues"?}
DST/model.json    {"format": "blip_jax", "version": 1, "config": BlipConfig.to_dict()}
DST/tokenizer.model or DST/vocab.txt   the tokenizer, where the writer had one (`interop.load` finds it)
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from blip_jax.interop.checkpoint import Checkpoint, CheckpointError, select_params
from blip_jax.models.blip import param_shapes
from blip_jax.models.config import BlipConfig

VERSION = 1


def save_native(ckpt: Checkpoint, directory: str, tokenizer_file: str | None = None) -> None:
  """Write the checkpoint (and a copy of `tokenizer_file`, a tokenizer.model or vocab.txt) to `directory`."""
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
  if jax.process_index() != 0:  # on a pod the arrays above are written by every process, the rest by one
    return
  with open(os.path.join(directory, "model.json"), "w") as f:
    json.dump({"format": "blip_jax", "version": VERSION, "config": ckpt.config.to_dict()}, f, indent=2)
  if tokenizer_file:
    shutil.copy(tokenizer_file, os.path.join(directory, os.path.basename(tokenizer_file)))


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
  try:
    config = BlipConfig.from_dict(meta["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(meta_path, f"invalid model config ({e})") from None
  try:
    with ocp.StandardCheckpointer() as ckptr:
      # restored as host numpy arrays whatever topology wrote them (a pod's checkpoint on a laptop)
      meta = ckptr.metadata(os.path.join(directory, "state")).item_metadata
      meta = meta.tree if hasattr(meta, "tree") else meta
      target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), meta)
      state = ckptr.restore(os.path.join(directory, "state"), target)
  except Exception as e:  # orbax raises several types for missing/corrupt directories
    raise CheckpointError(
      os.path.join(directory, "state"), f"unreadable orbax state ({type(e).__name__}: {e})"
    ) from None
  # model.json must describe the stored arrays: an edited or mismatched config is refused here, not
  # discovered later as random weights in an export
  select_params(
    param_shapes(config),
    state["params"],
    os.path.join(directory, "state"),
    f"the {config.task!r} model that model.json describes",
    exact=True,
  )
  queues = state.get("queues")
  if queues is not None:
    queues = dict(queues)
    queues["ptr"] = int(queues["ptr"])
  return Checkpoint(config, state["params"], state.get("momentum_params"), queues)

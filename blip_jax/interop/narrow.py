"""Task narrowing: a checkpoint of a larger task (pretrain) initialises a model whose params are a
subset of its tree (caption, itm, retrieval), with every missing or mis-shaped key named."""
from __future__ import annotations

import jax
import numpy as np

from blip_jax.interop.checkpoint import CheckpointError


def select_params(want, have: dict, source: str, what: str = "the model"):
  """The leaves of `have` at the paths of `want` (a tree of arrays or ShapeDtypeStructs), as a tree
  shaped like `want`. Raises CheckpointError listing missing and mis-shaped keys."""
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  have_by_path = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(have)[0]}
  missing, mismatched, leaves = [], [], []
  for path, spec in flat_want:
    key = jax.tree_util.keystr(path)
    if key not in have_by_path:
      missing.append(key)
      continue
    value = have_by_path[key]
    if tuple(np.shape(value)) != tuple(spec.shape):
      mismatched.append(f"{key}: {tuple(np.shape(value))} vs {tuple(spec.shape)}")
    leaves.append(value)
  if missing or mismatched:
    raise CheckpointError(source, f"does not fit {what}", missing=missing, mismatched=mismatched)
  return jax.tree.unflatten(jax.tree.structure(want), leaves)

"""What an import returns and an export takes, the one error bad checkpoints raise, and the strict
match of a params tree against the shapes a model expects."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from blip_jax.interop.keymap import flatten, unflatten
from blip_jax.models.config import BlipConfig


@dataclasses.dataclass
class Checkpoint:
  """A model's state in blip_jax layout (numpy arrays in plain nested dicts).

  queues (pretrain/retrieval): {"image": (Q, E) f32, "text": (Q, E) f32, "ptr": int, "idx": (Q,) int64}
  (the Salesforce buffers are (E, Q) and (1, Q): they are transposed on the way in and out).
  notes: what the import filled in, resized or dropped, for the user to see.
  tokenizer: the tokenizer found beside the checkpoint by `interop.load` (None: not looked up / none).
  fresh: names of modules the model has and this checkpoint leaves to their initialisation by design
  (NLVR2 from a pretraining checkpoint: `merge_layer`, `cls_head_0`, `cls_head_2`); see `fill_fresh`.
  """

  config: BlipConfig
  params: dict[str, Any]
  momentum_params: dict[str, Any] | None = None
  queues: dict[str, Any] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)
  tokenizer: Any = None
  fresh: tuple[str, ...] = ()


class CheckpointError(ValueError):
  """A checkpoint that does not fit the requested model: every offending key named at once."""

  def __init__(
    self, source: str, problem: str, *, missing=(), unexpected=(), mismatched=(), inconsistent=(), hint: str = ""
  ):
    self.source, self.missing, self.unexpected = source, list(missing), list(unexpected)
    self.mismatched, self.inconsistent = list(mismatched), list(inconsistent)
    lines = [f"{source}: {problem}"]
    for title, items in (
      ("missing keys", self.missing),
      ("unexpected keys", self.unexpected),
      ("shape mismatches (key: checkpoint vs expected)", self.mismatched),
      ("tied copies that differ", self.inconsistent),
    ):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines += [f"    {x}" for x in items[:40]]
        if len(items) > 40:
          lines.append(f"    ... and {len(items) - 40} more")
    if hint:
      lines.append(f"  hint: {hint}")
    super().__init__("\n".join(lines))


def select_params(want, have: dict, source: str, what: str = "the model", exact: bool = False) -> dict:
  """The leaves of `have` at the paths of `want` (a nested dict of arrays or ShapeDtypeStructs), as a
  tree shaped like `want`. Raises CheckpointError listing missing and mis-shaped keys (and, with
  exact=True, keys of `have` that `want` lacks)."""
  have_flat = dict(flatten(have))
  missing, mismatched, leaves = [], [], []
  for path, spec in flatten(want):
    key = "/".join(path)
    if path not in have_flat:
      missing.append(key)
      continue
    value = have_flat[path]
    if tuple(np.shape(value)) != tuple(spec.shape):
      mismatched.append(f"{key}: {tuple(np.shape(value))} vs {tuple(spec.shape)}")
    leaves.append((path, value))
  unexpected = sorted("/".join(p) for p in set(have_flat) - {p for p, _ in flatten(want)}) if exact else []
  if missing or mismatched or unexpected:
    raise CheckpointError(source, f"does not fit {what}", missing=missing, mismatched=mismatched, unexpected=unexpected)
  return unflatten(leaves)


def fill_fresh(have: dict, initial: dict, names: tuple[str, ...]) -> tuple[dict, list[str]]:
  """`have` plus the leaves of `initial` it lacks whose path passes through a module in `names`
  (what a checkpoint leaves to initialisation by design, `Checkpoint.fresh`). Returns (tree, the
  filled paths); anything else missing is left for `select_params` to report."""
  flat = dict(flatten(have))
  filled = []
  for path, value in flatten(initial):
    if path not in flat and any(p in names for p in path):
      flat[path] = value
      filled.append("/".join(path))
  return unflatten(sorted(flat.items())), filled

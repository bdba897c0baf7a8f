"""What an import returns and an export takes, and the one error bad checkpoints raise."""
from __future__ import annotations

import dataclasses
from typing import Any

from blip_jax.models.config import BlipConfig


@dataclasses.dataclass
class Checkpoint:
  """A model's state in blip_jax layout (numpy arrays in plain nested dicts).

  queues (pretrain/retrieval): {"image": (Q, E) f32, "text": (Q, E) f32, "ptr": int, "idx": (Q,) int64}
  (the Salesforce buffers are (E, Q) and (1, Q): they are transposed on the way in and out).
  notes: what the import filled in, resized or dropped, for the user to see.
  """
  config: BlipConfig
  params: dict[str, Any]
  momentum_params: dict[str, Any] | None = None
  queues: dict[str, Any] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)


class CheckpointError(ValueError):
  """A checkpoint that does not fit the requested model: every offending key named at once."""

  def __init__(self, source: str, problem: str, *, missing=(), unexpected=(), mismatched=(),
               inconsistent=(), hint: str = ""):
    self.source, self.missing, self.unexpected = source, list(missing), list(unexpected)
    self.mismatched, self.inconsistent = list(mismatched), list(inconsistent)
    lines = [f"{source}: {problem}"]
    for title, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                         ("shape mismatches (key: checkpoint vs expected)", self.mismatched),
                         ("tied copies that differ", self.inconsistent)):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines += [f"    {x}" for x in items[:40]]
        if len(items) > 40:
          lines.append(f"    ... and {len(items) - 40} more")
    if hint:
      lines.append(f"  hint: {hint}")
    super().__init__("\n".join(lines))

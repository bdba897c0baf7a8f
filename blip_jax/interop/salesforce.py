"""Official Salesforce BLIP checkpoints: `torch.save({'model': state_dict})` .pth files."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from blip_jax.interop.checkpoint import Checkpoint, CheckpointError
from blip_jax.interop.state_dict import export_state_dict, import_state_dict
from blip_jax.models.config import BlipConfig


def read_pth(path: str) -> Mapping[str, Any]:
  """The state dict inside an official .pth (accepts {'model': sd}, {'state_dict': sd} or sd)."""
  import torch  # lazy: blip_jax works without torch

  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise CheckpointError(path, "file not found") from None
  except Exception as e:  # truncated zip, pickle errors, ...: torch raises many types
    raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
  for key in ("model", "state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      return obj[key]
  if isinstance(obj, dict):
    return obj
  raise CheckpointError(path, f"expected a dict of tensors, found {type(obj).__name__}")


def load_salesforce(
  src: str | Mapping[str, Any], task: str, config: BlipConfig | None = None, ignore=(), source: str = "<state dict>"
) -> Checkpoint:
  """Import an official checkpoint (a .pth path, or any mapping key -> array named `source` in errors)."""
  if isinstance(src, (str, os.PathLike)):
    return import_state_dict(read_pth(str(src)), task, "salesforce", config, str(src), ignore)
  return import_state_dict(src, task, "salesforce", config, source, ignore)


def save_salesforce(ckpt: Checkpoint, path: str) -> None:
  """Write `{'model': state_dict}` with the complete official key set (torch tensors)."""
  import torch

  # np.array copies into C order and, unlike ascontiguousarray, keeps 0-d tensors (temp) 0-d.
  sd = {k: torch.from_numpy(np.array(v, order="C")) for k, v in export_state_dict(ckpt, "salesforce").items()}
  torch.save({"model": sd}, path)

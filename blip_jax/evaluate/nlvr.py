"""NLVR2 evaluation as the official train_nlvr.py: accuracy of the head's argmax over the eval set
(both images at the eval transform, no swap), batches sharded over the mesh's batch axes."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from blip_jax.evaluate.eval_set import load_arrays
from blip_jax.models.blip import Blip


class Nlvr:
  """The NLVR2 evaluator (see the module docstring)."""

  def __init__(self, exp, tokenizer, mesh, out_dir: str | None = None, data: dict | None = None):
    cfg = exp.cfg
    self.data, skipped = (
      (data, 0) if data is not None else load_arrays(cfg, tokenizer, exp.model.vision.image_size, "nlvr")
    )
    self.notes = (
      [f"evaluation set: {len(self.data['label'])} examples ({skipped} unreadable skipped)"] if skipped else []
    )
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.batch = -(-cfg.eval.batch // shards) * shards
    model = Blip(exp.model)
    self._logits = jax.jit(
      lambda p, images, ids, mask: model.apply({"params": p}, images, ids, mask)["nlvr_logits"],
      out_shardings=NamedSharding(mesh, PartitionSpec()),
    )

  def evaluate(self, params, step: int | None = None) -> tuple[dict, list]:
    n = len(self.data["label"])
    predictions = []
    for start in range(0, n, self.batch):
      part = {k: v[start : start + self.batch] for k, v in self.data.items()}
      m = len(part["label"])
      if m < self.batch:
        part = {k: np.concatenate([v, np.repeat(v[-1:], self.batch - m, 0)]) for k, v in part.items()}
      logits = jax.device_get(self._logits(params, part["images"], part["ids"], part["mask"]))
      predictions.append(np.argmax(logits, -1)[:m])
    predictions = np.concatenate(predictions)
    labels = self.data["label"]
    majority = max(labels.mean(), 1 - labels.mean())
    metrics = {"accuracy": float(100.0 * (predictions == labels).mean()), "majority": float(100.0 * majority)}
    metrics["examples"] = float(n)
    return metrics, []

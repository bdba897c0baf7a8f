"""Captioning evaluation as the official train_caption.py: beam search (eval.num_beams 3, max_length 20,
min_length 5, both counting [DEC] and the prompt) over the eval set, the prompt stripped from the
output, scored against every reference caption with pycocoevalcap (coco_metrics): BLEU-1..4, ROUGE-L,
CIDEr (METEOR with eval.meteor where Java exists). `cider_bleu4` = CIDEr + BLEU-4 picks the best
checkpoint, as the official model selection on Karpathy val. `CIDEr_shuffled` scores the same captions
against the next image's references: what captions that ignore the image would get.

The images are encoded and decoded in batches sharded over the mesh's batch axes. With an `out_dir`,
each evaluation writes `captions_step_<N>.json` there: `[{"image_id", "caption"}]`, the file the COCO
and NoCaps servers take.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from blip_jax.evaluate import coco_metrics, eval_set
from blip_jax.generate.search import generate
from blip_jax.models.blip import Blip


class Captioning:
  """The captioning evaluator (see the module docstring)."""

  def __init__(self, exp, tokenizer, mesh, out_dir: str | None = None, data: eval_set.EvalSet | None = None):
    cfg, e = exp.cfg, exp.cfg.eval
    self.model, self.text_config, self.tokenizer, self.out_dir = Blip(exp.model), exp.model.text, tokenizer, out_dir
    self.data = data or eval_set.load(cfg, tokenizer, exp.model.vision.image_size)
    self.notes = [n for n in [self.data.note(e.num)] if n]
    prompt = cfg.get("prompt", "")
    self.prompt = np.asarray(tokenizer.tokenize_ids(prompt) if prompt else [], np.int32)
    self.options = tuple(
      sorted(
        dict(
          num_beams=e.get("num_beams", 3), max_length=e.get("max_length", 20), min_length=e.get("min_length", 5)
        ).items()
      )
    )
    if 1 + len(self.prompt) >= dict(self.options)["max_length"]:
      raise ValueError(
        f"config.eval.max_length={dict(self.options)['max_length']} leaves no room after [DEC] and the "
        f"{len(self.prompt)} tokens of config.prompt={prompt!r}"
      )
    self.meteor = bool(e.get("meteor", False))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.batch = -(-e.batch // shards) * shards
    sharded = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    self._encode = jax.jit(
      lambda p, x: self.model.apply({"params": p}, x, method=Blip.encode_image), out_shardings=sharded
    )
    self._gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def captions(self, params) -> list[str]:
    """One caption per eval image (beam search; the prompt removed)."""
    out, n, p = [], len(self.data), len(self.prompt)
    method = "beam" if dict(self.options)["num_beams"] > 1 else "greedy"
    options = self.options if method == "beam" else tuple(o for o in self.options if o[0] != "num_beams")
    for start in range(0, n, self.batch):
      part = self.data.images[start : start + self.batch]
      m = len(part)
      if m < self.batch:
        part = np.concatenate([part, np.repeat(part[-1:], self.batch - m, 0)])
      embeds = self._encode(params, part)
      ids, lengths = generate(
        params, self.text_config, embeds, jnp.asarray(self.prompt), method=method, options=options
      )
      ids, lengths = jax.device_get(self._gather((ids, lengths)))  # every process gets every caption
      out += [self.tokenizer.decode(ids[r, 1 + p : lengths[r]]).strip() for r in range(m)]
    return out

  def evaluate(self, params, step: int | None = None) -> tuple[dict, list]:
    """BLEU-1..4, ROUGE-L, CIDEr[, METEOR] and cider_bleu4; writes the result file."""
    captions = self.captions(params)
    results = {i: c for i, c in enumerate(captions)}
    references = {i: refs for i, refs in enumerate(self.data.captions)}
    metrics = coco_metrics.score(results, references, meteor=self.meteor)
    metrics["cider_bleu4"] = metrics["CIDEr"] + metrics["Bleu_4"]
    if len(captions) > 1:  # a floor: the same captions, each scored against another image's references
      shifted = {i: captions[(i + 1) % len(captions)] for i in results}
      metrics["CIDEr_shuffled"] = coco_metrics.score(shifted, references)["CIDEr"]
    metrics["images"] = float(len(captions))
    if self.out_dir and jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      path = os.path.join(self.out_dir, f"captions_step_{step if step is not None else 'final'}.json")
      with open(path + ".tmp", "w") as f:
        json.dump([{"image_id": int(i), "caption": c} for i, c in zip(self.data.image_ids, captions)], f)
      os.replace(path + ".tmp", path)
    return metrics, [(self.data.images[i], captions[i]) for i in range(min(4, len(captions)))]

"""The held-out sets the evaluators read, once, from config.eval.sources in order (unreadable images
are skipped and counted): images (eval transform) with all their reference captions (`load`), or the
stacked arrays of another record format (`load_arrays`: VQA, NLVR2)."""

from __future__ import annotations

import dataclasses

import numpy as np

from blip_jax.data.text import pre_caption
from blip_jax.train import inputs


@dataclasses.dataclass(frozen=True)
class EvalSet:
  images: np.ndarray  # (N, S, S, 3) float32, normalised
  captions: list[list[str]]  # raw reference captions per image (1..max_captions each)
  image_ids: np.ndarray  # (N,) int64: the record's image id (result files name images by it)
  skipped: int  # unreadable images left out

  def __len__(self) -> int:
    return len(self.images)

  def texts(self) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """All captions flattened: (texts (T,), txt2img (T,) image of each text, img2txt per image)."""
    texts, txt2img, img2txt = [], [], []
    for i, caps in enumerate(self.captions):
      img2txt.append(list(range(len(texts), len(texts) + len(caps))))
      texts += caps
      txt2img += [i] * len(caps)
    return texts, np.asarray(txt2img, np.int64), img2txt

  def note(self, asked: int) -> str | None:
    """A line for the log when the set is smaller than asked or images were skipped."""
    if (asked and len(self) < asked) or self.skipped:
      return (
        f"evaluation set: {len(self)} images{f' of the {asked} asked for' if asked else ''} "
        f"({self.skipped} unreadable images skipped)"
      )
    return None


def load(cfg, tokenizer, image_size: int) -> EvalSet:
  """The first config.eval.num images (0 = all) of config.eval.sources."""
  loader = inputs.eval_loader(cfg, tokenizer, image_size)
  limit = cfg.eval.num
  images, captions, ids, n = [], [], [], 0
  try:
    for batch in loader:
      images.append(batch["images"])
      ids.append(batch["image_id"])
      captions += [list(c[:k]) for c, k in zip(batch["captions"].tolist(), batch["num_captions"].tolist())]
      n += len(batch["images"])
      if limit and n >= limit:
        break
  finally:
    loader.close()
  if not images:
    raise ValueError("config.eval.sources: no readable evaluation images")
  limit = limit or n
  return EvalSet(np.concatenate(images)[:limit], captions[:limit], np.concatenate(ids)[:limit], loader.skipped)


def tokenize(tokenizer, texts: list[str], length: int, max_words: int = 30) -> tuple[np.ndarray, np.ndarray]:
  """Captions cleaned as the official evaluation (pre_caption) and tokenised: (T, L) ids and mask."""
  return tokenizer.encode([pre_caption(t, max_words) for t in texts], length)


def load_arrays(cfg, tokenizer, image_size: int, fmt: str) -> tuple[dict, int]:
  """Every eval example of config.eval.sources in record format `fmt`, as stacked arrays (the first
  config.eval.num; 0 = all), and the number of unreadable ones skipped."""
  loader = inputs.eval_loader(cfg, tokenizer, image_size, fmt)
  parts, n = [], 0
  try:
    for batch in loader:
      parts.append(batch)
      n += len(batch["images"])
      if cfg.eval.num and n >= cfg.eval.num:
        break
  finally:
    loader.close()
  if not parts:
    raise ValueError("config.eval.sources: no readable evaluation examples")
  limit = cfg.eval.num or n
  return {k: np.concatenate([p[k] for p in parts])[:limit] for k in parts[0]}, loader.skipped

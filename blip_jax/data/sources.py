"""BLIP annotation json + image folder sources (random access), with strict, located errors.

Formats (reference section 7):
  pretrain   [{image, caption}]                      retrieval / caption train: {image, caption, image_id}
  eval       {image, caption: [...]}                 vqa: {image, question, answer, dataset}
  nlvr       {images: [a, b], sentence, label}
Malformed json fails with the file and line; a malformed record fails with the file and record index,
or, with skip_bad_records=True, is dropped and counted (`skipped_records`). Images are read lazily by
`load_image`, whose failures raise BadExample naming the file; `SkipCounter` turns those into counted
skips with a threshold.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

REQUIRED = {
    "pretrain": {"image": str, "caption": str},
    "retrieval": {"image": str, "caption": str, "image_id": (int, str)},
    "eval": {"image": str, "caption": list},
    "vqa": {"image": str, "question": str},
    "nlvr": {"images": list, "sentence": str, "label": (bool, int, str)},
}


class DataError(ValueError):
  """Bad input data, with its location in the message."""


class BadExample(DataError):
  """One unusable example (unreadable image, ...): skippable."""


def load_annotations(path: str, kind: str, skip_bad_records: bool = False) -> tuple[list[dict], int]:
  """Records of one annotation file, validated for `kind`. Returns (records, number skipped)."""
  if kind not in REQUIRED:
    raise ValueError(f"kind={kind!r}: must be one of {sorted(REQUIRED)}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: annotation file not found") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: malformed json at line {e.lineno}, column {e.colno}: {e.msg}") from None
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a json list of records, found {type(data).__name__}")
  records, skipped = [], 0
  for i, rec in enumerate(data):
    problem = _check(rec, REQUIRED[kind])
    if problem:
      if not skip_bad_records:
        raise DataError(f"{path}: record {i}: {problem}")
      skipped += 1
      logging.warning("%s: record %d skipped: %s", path, i, problem)
      continue
    records.append(rec)
  return records, skipped


def _check(rec: Any, required: dict) -> str | None:
  if not isinstance(rec, dict):
    return f"expected an object, found {type(rec).__name__}"
  for key, types in required.items():
    if key not in rec:
      return f"missing key {key!r}"
    if not isinstance(rec[key], types):
      return f"key {key!r} has type {type(rec[key]).__name__}"
  return None


def load_image(path: str) -> Image.Image:
  """RGB PIL image, fully decoded now (truncated files fail here, not later)."""
  try:
    with Image.open(path) as img:
      img.load()
      return img.convert("RGB")
  except FileNotFoundError:
    raise BadExample(f"{path}: image not found") from None
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise BadExample(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


class JsonSource:
  """Random access over one or more annotation files of one kind; images resolved under image_root."""

  def __init__(self, ann_files: Sequence[str], image_root: str, kind: str, skip_bad_records: bool = False):
    self.kind, self.image_root = kind, image_root
    self.records: list[dict] = []
    self.skipped_records = 0
    for path in ann_files:
      recs, skipped = load_annotations(path, kind, skip_bad_records)
      self.records += recs
      self.skipped_records += skipped

  def __len__(self) -> int:
    return len(self.records)

  def image_paths(self, i: int) -> list[str]:
    rec = self.records[i]
    names = rec["images"] if self.kind == "nlvr" else [rec["image"]]
    return [os.path.join(self.image_root, n) for n in names]

  def __getitem__(self, i: int) -> dict:
    """The record plus decoded images under "pil" (a list for NLVR2). Raises BadExample."""
    out = dict(self.records[i])
    out["pil"] = [load_image(p) for p in self.image_paths(i)]
    return out


class SkipCounter:
  """Counts skipped examples by reason; raises once the skipped fraction of those seen passes
  `max_fraction` (after `min_seen` examples, so one early failure does not stop a run)."""

  def __init__(self, max_fraction: float = 0.01, min_seen: int = 100):
    self.max_fraction, self.min_seen = max_fraction, min_seen
    self.seen = self.skipped = 0
    self.examples: list[str] = []
    self._lock = threading.Lock()

  def ok(self) -> None:
    with self._lock:
      self.seen += 1

  def skip(self, err: BadExample) -> None:
    with self._lock:
      self.seen += 1
      self.skipped += 1
      if len(self.examples) < 20:
        self.examples.append(str(err))
      logging.warning("skipped example: %s (%d of %d so far)", err, self.skipped, self.seen)
      if self.seen >= self.min_seen and self.skipped > self.max_fraction * self.seen:
        raise DataError(f"{self.skipped} of {self.seen} examples skipped ({self.skipped / self.seen:.1%} > "
                        f"max_skip_fraction {self.max_fraction:.1%}); first ones: " + "; ".join(self.examples[:5]))

"""BLIP annotation json + image folder sources (random access), with strict, located errors.

Formats (reference section 7):
  pretrain   [{image, caption}]                      retrieval / caption train: {image, caption, image_id}
  eval       {image, caption: [...]}                 vqa: {image, question, answer, dataset}
  nlvr       {images: [a, b], sentence, label}
Malformed json fails with the file and line; a malformed record fails with the file and record index,
or, with skip_bad_records=True, is dropped and counted (`skipped_records`). Images are read lazily by
`load_image`, whose failures raise BadExample naming the file; the loader (data.loader) counts and
skips those, with a threshold.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

# The record formats (their required keys); `TASK_FORMAT` says which one each model task trains on.
RECORD_FORMATS = {
  "pretrain": {"image": str, "caption": str},
  "retrieval": {"image": str, "caption": str, "image_id": (int, str)},
  "eval": {"image": str, "caption": list},
  "vqa": {"image": str, "question": str},
  "nlvr": {"images": list, "sentence": str, "label": (bool, int, str)},
}
TASK_FORMAT = {
  "pretrain": "pretrain",
  "retrieval": "retrieval",
  "itm": "retrieval",
  "caption": "retrieval",
  "vqa": "vqa",
  "nlvr": "nlvr",
}


class DataError(ValueError):
  """Bad input data, with its location in the message."""


class BadExample(DataError):
  """One unusable example (unreadable image, ...): skippable."""


def load_annotations(path: str, kind: str, skip_bad_records: bool = False) -> tuple[list[dict], int]:
  """Records of one annotation file, validated for `kind`. Returns (records, number skipped)."""
  if kind not in RECORD_FORMATS:
    raise ValueError(f"kind={kind!r}: must be one of {sorted(RECORD_FORMATS)}")
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
    problem = _check(rec, RECORD_FORMATS[kind])
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


class SyntheticSource:
  """The synthetic world as BLIP records: caption (possibly noisy), image_id, clean."""

  def __init__(self, num: int, seed: int = 0, noise: float = 0.0, image_size: int = 96, offset: int = 0):
    from blip_jax.data.synthetic import SyntheticWorld

    self.offset = offset  # a held-out range: examples [offset, offset + num) of a larger world
    self.world = SyntheticWorld(
      offset + num, seed=seed, noise=noise, image_size=image_size, noisy_prefix=offset + num if offset == 0 else offset
    )
    self.num = num

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, i: int) -> dict:
    img, ex = self.world[self.offset + i]
    return {
      "pil": [img],
      "caption": ex.caption,
      "image_id": self.offset + i,
      "clean": ex.clean,
      "true_caption": ex.true_caption,
    }


def make_source(spec: dict, fmt: str):
  """One random-access source from its config entry:
    {"type": "json", "ann": [files], "image_root": dir}
    {"type": "tfds", "name": ..., "split": "train", "data_dir": ...} or {"type": "tfds", "directory": ...}
      (optional "mapping": {"image": feature, "caption": feature, "image_id": feature})
    {"type": "synthetic", "num": N, "seed": 0, "noise": 0.0, "image_size": 96, "offset": 0}
  Any entry may carry "weight" (mixture proportion; default 1). `fmt`: the record format a json
  source must hold (a key of RECORD_FORMATS)."""
  spec = dict(spec)
  kind = spec.pop("type", None)
  spec.pop("weight", None)
  try:
    if kind == "json":
      return JsonSource(
        list(spec.pop("ann")), spec.pop("image_root"), fmt, skip_bad_records=spec.pop("skip_bad_records", False), **spec
      )
    if kind == "tfds":
      from blip_jax.data.tfds_source import TfdsSource

      return TfdsSource(**spec)
    if kind == "synthetic":
      return SyntheticSource(**spec)
  except TypeError as e:  # unknown or missing keys
    raise ValueError(f"data source {kind!r}: {e}") from None
  raise ValueError(f"data source type={kind!r}: must be 'json', 'tfds' or 'synthetic'")

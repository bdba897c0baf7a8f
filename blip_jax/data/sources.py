"""BLIP annotation json + image folder sources (random access), with strict, located errors.

Formats (reference section 7):
  pretrain   [{image, caption}]                      retrieval / caption train: {image, caption, image_id}
  eval       {image, caption: [...]}                 vqa: {image, question, answer, dataset}
The retrieval format is the official Karpathy-split train json (coco_karpathy_train.json,
flickr30k_train.json): image_id may be a string ("coco_391895"); ids are mapped to dense integers in
order of first appearance, as the official dataset does, so captions of one image share one id.
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
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

# The record formats (their required keys); `TASK_FORMAT` says which one each model task trains on.
RECORD_FORMATS = {
  "pretrain": {"image": str, "caption": str},
  "retrieval": {"image": str, "caption": str, "image_id": (int, str)},
  "eval": {"image": str, "caption": (list, str)},
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


def load_annotations(path: str, kind: str, skip_bad_records: bool = False, with_indices: bool = False) -> tuple:
  """Records of one annotation file, validated for `kind`. Returns (records, number skipped), and with
  with_indices=True also each kept record's index in the file."""
  if kind not in RECORD_FORMATS:
    raise ValueError(f"kind={kind!r}: must be one of {sorted(RECORD_FORMATS)}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: annotation file not found") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: malformed json at line {e.lineno}, column {e.colno}: {e.msg}") from None
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a json list of records, found {type(data).__name__}")
  records, skipped, indices = [], 0, []
  for i, rec in enumerate(data):
    problem = _check(rec, RECORD_FORMATS[kind])
    if problem:
      if not skip_bad_records:
        raise DataError(f"{path}: record {i}: {problem}")
      skipped += 1
      logging.warning("%s: record %d skipped: %s", path, i, problem)
      continue
    records.append(rec)
    indices.append(i)
  return (records, skipped, indices) if with_indices else (records, skipped)


def _check(rec: Any, required: dict) -> str | None:
  if not isinstance(rec, dict):
    return f"expected an object, found {type(rec).__name__}"
  for key, types in required.items():
    if key not in rec:
      return f"missing key {key!r}"
    if not isinstance(rec[key], types):
      return f"key {key!r} has type {type(rec[key]).__name__}"
  for key, value in rec.items():  # json allows lone surrogates ("\\ud800"); no tokenizer does
    for text in value if isinstance(value, list) else [value]:
      if isinstance(text, str) and not _is_utf8(text):
        return f"key {key!r} holds text that is not valid Unicode (a lone surrogate)"
  return None


def _is_utf8(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit; config.data.max_image_pixels overrides


def load_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
  """RGB PIL image, fully decoded now (truncated files fail here, not later).

  Every PIL mode is converted as the official `Image.open(p).convert("RGB")` would, except high bit
  depths, which PIL's conversion clips to white: 16-bit and 32-bit integer greyscale are scaled to 8
  bits (v / 257), float greyscale clipped to [0, 255]. Raises BadExample naming the file for a missing,
  unreadable or truncated file and for an image of more than `max_pixels` pixels (a decompression bomb).
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
      with Image.open(path) as img:
        if img.width * img.height > max_pixels:
          raise BadExample(
            f"{path}: {img.width}x{img.height} = {img.width * img.height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (a decompression bomb?; config.data.max_image_pixels)"
          )
        img.load()
        return _to_rgb(img)
  except FileNotFoundError:
    raise BadExample(f"{path}: image not found") from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, BadExample):
      raise
    raise BadExample(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode.startswith("I;16") or img.mode == "I":
    grey = np.clip(np.round(np.asarray(img, np.float64) / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
  if img.mode == "F":
    return Image.fromarray(np.clip(np.round(np.asarray(img, np.float64)), 0, 255).astype(np.uint8), "L").convert("RGB")
  return img.convert("RGB")


class JsonSource:
  """Random access over one or more annotation files of one kind; images resolved under image_root."""

  def __init__(
    self,
    ann_files: Sequence[str],
    image_root: str,
    kind: str,
    skip_bad_records: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
  ):
    self.kind, self.image_root, self.max_image_pixels = kind, image_root, max_image_pixels
    self.records: list[dict] = []
    self.origins: list[tuple[str, int]] = []  # (annotation file, record index in it) per record
    self.skipped_records = 0
    for path in ann_files:
      recs, skipped, indices = load_annotations(path, kind, skip_bad_records, with_indices=True)
      self.records += recs
      self.origins += [(path, j) for j in indices]
      self.skipped_records += skipped
    if kind == "retrieval":  # string or sparse ids -> 0, 1, 2, ... by first appearance
      dense: dict = {}
      self.records = [dict(r, image_id=dense.setdefault(r["image_id"], len(dense))) for r in self.records]

  def __len__(self) -> int:
    return len(self.records)

  def image_paths(self, i: int) -> list[str]:
    rec = self.records[i]
    names = rec["images"] if self.kind == "nlvr" else [rec["image"]]
    return [os.path.join(self.image_root, n) for n in names]

  def describe(self, i: int) -> str:
    """Where example i comes from, for messages."""
    path, j = self.origins[i]
    return f"{path} record {j} ({', '.join(self.image_paths(i))})"

  def __getitem__(self, i: int) -> dict:
    """The record plus decoded images under "pil" (a list for NLVR2). Raises BadExample."""
    out = dict(self.records[i])
    out["pil"] = [load_image(p, self.max_image_pixels) for p in self.image_paths(i)]
    return out


class SyntheticSource:
  """The synthetic world as BLIP records of the format `fmt` asks for: captions (caption, possibly
  noisy, image_id, clean), VQA (question, answer: ten agreeing annotators, dataset) or NLVR2 (two
  scenes, sentence, label)."""

  def __init__(
    self,
    num: int,
    seed: int = 0,
    noise: float = 0.0,
    image_size: int = 96,
    offset: int = 0,
    captions: int = 1,
    fmt: str = "pretrain",
  ):
    """captions > 1: every record carries that many captions (the first as with 1, the others other
    true descriptions of the scene), like COCO's five: training draws one per epoch, evaluation uses
    them all."""
    from blip_jax.data.synthetic import SyntheticWorld

    if captions < 1:
      raise ValueError(f"data source 'synthetic': captions={captions} must be >= 1")
    self.captions, self.fmt = captions, fmt
    self.offset = offset  # a held-out range: examples [offset, offset + num) of a larger world
    self.world = SyntheticWorld(
      offset + num, seed=seed, noise=noise, image_size=image_size, noisy_prefix=offset + num if offset == 0 else offset
    )
    self.num = num

  def __len__(self) -> int:
    return self.num

  def describe(self, i: int) -> str:
    return f"synthetic example {self.offset + i}"

  def __getitem__(self, i: int) -> dict:
    if self.fmt == "nlvr":
      left, right, sentence, label = self.world.nlvr(self.offset + i)
      return {"pil": [self.world[left][0], self.world[right][0]], "sentence": sentence, "label": label}
    img, ex = self.world[self.offset + i]
    if self.fmt == "vqa":  # one of the scene's questions, drawn per scene
      qa = self.world.vqa(self.offset + i)
      question, answer = qa[int(np.random.default_rng([self.world.seed, 6, self.offset + i]).integers(len(qa)))]
      return {"pil": [img], "question": question, "answer": [answer] * 10, "dataset": "synthetic"}
    caption = (
      ex.caption if self.captions == 1 else [ex.caption] + self.world.captions(self.offset + i, self.captions)[1:]
    )
    return {
      "pil": [img],
      "caption": caption,
      "image_id": self.offset + i,
      "clean": ex.clean,
      "true_caption": ex.true_caption,
    }


def make_source(spec: dict, fmt: str):
  """One random-access source from its config entry:
    {"type": "json", "ann": [files], "image_root": dir}
    {"type": "tfds", "name": ..., "split": "train", "data_dir": ...} or {"type": "tfds", "directory": ...}
      (optional "mapping": {"image": feature, "caption": feature, "image_id": feature})
    {"type": "synthetic", "num": N, "seed": 0, "noise": 0.0, "image_size": 96, "offset": 0, "captions": 1}
  Any entry may carry "weight" (mixture proportion; default 1) and "human" (CapFilt leaves it as it
  is). `fmt`: the record format a json source must hold (a key of RECORD_FORMATS)."""
  spec = dict(spec)
  kind = spec.pop("type", None)
  spec.pop("weight", None)
  spec.pop("human", None)  # CapFilt: a human-annotated source passes untouched (blip_jax.capfilt)
  try:
    if kind == "json":
      ann = spec.pop("ann", None)
      if not ann or not isinstance(ann, (str, list, tuple)):
        raise ValueError(f"data source 'json': 'ann' must name the annotation file(s), a path or a list; got {ann!r}")
      if "image_root" not in spec:
        raise ValueError("data source 'json': missing key 'image_root' (the folder the records' image paths start in)")
      ann = [ann] if isinstance(ann, str) else list(ann)
      return JsonSource(ann, spec.pop("image_root"), fmt, **spec)
    if kind == "tfds":
      from blip_jax.data.tfds_source import TfdsSource

      return TfdsSource(**spec)
    if kind == "synthetic":
      return SyntheticSource(**spec, fmt=fmt)
  except TypeError as e:  # unknown or missing keys
    raise ValueError(f"data source {kind!r}: {e}") from None
  raise ValueError(f"data source type={kind!r}: must be 'json', 'tfds' or 'synthetic'")

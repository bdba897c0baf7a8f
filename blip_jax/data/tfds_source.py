"""TFDS sources read through `tfds.data_source` (array_record, random access, no tensorflow), and a
builder that writes BLIP json + image folders as an array_record TFDS dataset.

A TFDS record is mapped onto BLIP's record fields by a small feature mapping, e.g. for coco_captions:

  {"image": "image", "caption": "captions/text", "image_id": "image/id"}

A path naming a list of strings (coco's five captions) gives the training pipeline one caption per
(example, epoch), drawn from the example's rng, and the evaluators all of them.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from blip_jax.data.sources import BadExample, DataError, load_annotations

MAPPINGS = {  # well-known datasets; anything else passes its own mapping
  "coco_captions": {"image": "image", "caption": "captions/text", "image_id": "image/id"},
  "blip_captions": {"image": "image", "caption": "caption", "image_id": "image_id"},
}


def _lookup(record: dict, path: str, where: str):
  value = record
  for part in path.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise DataError(f"{where}: feature {path!r} not in the record (has {sorted(record)})")
    value = value[part]
  return value


def _text(value) -> str | list[str]:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype == object or isinstance(value, (list, tuple)):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _text(value.item())
  return str(value)


class TfdsSource:
  """Random access over a prepared TFDS split: a registered name (`tfds.data_source`) or a dataset
  directory (`builder_from_directory`). Records come out as BLIP records with decoded images ("pil")."""

  def __init__(
    self,
    name: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    directory: str | None = None,
    mapping: dict | None = None,
  ):
    import tensorflow_datasets as tfds

    if (name is None) == (directory is None):
      raise ValueError("TfdsSource: give exactly one of name= (registered dataset) or directory=")
    self.where = f"tfds {name or directory}[{split}]"
    try:
      if directory is not None:
        builder = tfds.builder_from_directory(directory)
        self._source = builder.as_data_source(split=split)
        name = builder.name
      else:
        if name == "blip_captions":
          builder_class()  # registers it
        self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many kinds; say which dataset and why
      raise DataError(
        f"{self.where}: cannot open ({type(e).__name__}: {e}). Is it prepared with file_format='array_record'?"
      ) from None
    if mapping is None and name not in MAPPINGS:
      raise ValueError(
        f"{self.where}: no feature mapping known for {name!r}; pass mapping={{'image': ..., 'caption': ...}}"
      )
    self.mapping = dict(mapping or MAPPINGS[name])
    if "image" not in self.mapping:
      raise ValueError(f"{self.where}: mapping {self.mapping} must name the 'image' feature")

  def __len__(self) -> int:
    return len(self._source)

  def describe(self, i: int) -> str:
    """Where example i comes from, for messages."""
    return f"{self.where} record {i}"

  def __getitem__(self, i: int) -> dict:
    where = f"{self.where} record {i}"
    try:
      rec = self._source[i]
    except Exception as e:  # a corrupt image or record inside array_record
      raise BadExample(f"{where}: unreadable ({type(e).__name__}: {e})") from None
    out = {}
    for field, path in self.mapping.items():
      value = _lookup(rec, path, where)
      if field == "image":
        arr = np.asarray(value)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
          raise BadExample(f"{where}: image of shape {arr.shape}")
        out["pil"] = [Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")]
      elif field == "image_id":
        out["image_id"] = int(np.asarray(value))
      else:
        out[field] = _text(value)
    return out


@functools.cache
def builder_class():
  """The `blip_captions` builder class (defined on first use so importing blip_jax does not import tfds;
  cached because tfds registers builder classes by name)."""
  import tensorflow_datasets as tfds

  class BlipCaptions(tfds.core.GeneratorBasedBuilder):
    """Image-caption pairs from a BLIP annotation json (pretrain or retrieval format)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From a BLIP json."}

    def __init__(
      self, *, ann_file: str | None = None, image_root: str | None = None, kind: str = "retrieval", **kwargs
    ):
      self._ann = (ann_file, image_root, kind)
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "caption": tfds.features.Text(),
            "image_id": np.int64,
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      ann_file, image_root, kind = self._ann
      if ann_file is None:
        raise ValueError("blip_captions: pass ann_file= and image_root= to prepare it")
      records, _ = load_annotations(ann_file, kind)
      for i, rec in enumerate(records):
        path = os.path.join(image_root, rec["image"])
        if not os.path.exists(path):
          raise DataError(f"{ann_file}: record {i}: image {path} not found")
        # image ids may be strings in BLIP jsons; tfds wants one type, so keep the record index then
        image_id = rec.get("image_id", i)
        yield i, {"image": path, "caption": rec["caption"], "image_id": image_id if isinstance(image_id, int) else i}

  return BlipCaptions


def build_from_json(ann_file: str, image_root: str, data_dir: str, kind: str = "retrieval") -> str:
  """Write a BLIP json (pretrain or retrieval format) + its images as the array_record TFDS dataset
  `blip_captions` under data_dir (train split). Returns the dataset directory."""
  import tensorflow_datasets as tfds

  builder = builder_class()(
    ann_file=ann_file, image_root=image_root, kind=kind, data_dir=data_dir, file_format="array_record"
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder.data_dir

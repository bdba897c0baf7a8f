"""Per-example preprocessing: a record of any BLIP format -> the arrays a task's step reads (decode,
BLIP augmentation, text cleaning, tokenisation, VQA answer weights, the NLVR2 left/right swap)."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from blip_jax.data.sources import RECORD_FORMATS
from blip_jax.data.text import pre_caption, pre_question
from blip_jax.data.tokenizer import Tokenizer
from blip_jax.data.transforms import apply_train, eval_transform, sample_train


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Record -> arrays for one record format (data.sources.RECORD_FORMATS; reference sections 3, 6, 7).
  Outputs, per example:
    pretrain / retrieval (also captioning, with `prompt`): images (S, S, 3) f32, ids (L,), mask (L,), idx ()
    eval: images, idx, captions (C,) str (every reference caption, "" padded), num_captions (),
          image_id () (the record's, else the digits ending the file name, else the index)
    vqa at evaluation also: answers (C,) str (every annotator's), num_answers (), question_id ()
    vqa: images, ids, mask (question), answer_ids (A, La),
    answer_mask (A, La), answer_weight (A,)    nlvr: images (2, S, S, 3), ids, mask, label ()
  idx is the record's image_id where it has one (multi-positive ITC), else the source index."""

  fmt: str  # a key of data.sources.RECORD_FORMATS
  tokenizer: Tokenizer
  image_size: int
  text_length: int = 30
  train: bool = True
  scale: tuple[float, float] = (0.2, 1.0)
  max_words: int = 30
  prompt: str = ""  # captioning: "a picture of "
  flip: bool = True  # off where captions say left / right and must stay true (the synthetic demo)
  randaug: bool = True
  answer_length: int = 8
  max_answers: int = 4
  max_captions: int = 10  # eval: reference captions per image (Karpathy COCO 5 to 7), VQA answers (10)

  def __post_init__(self):
    if self.fmt not in RECORD_FORMATS:
      raise ValueError(f"fmt={self.fmt!r}: must be one of {sorted(RECORD_FORMATS)}")

  def image(self, img, rng) -> np.ndarray:
    if not self.train:
      return eval_transform(img, self.image_size)
    draw = sample_train(rng, img.height, img.width, self.scale)  # same draws whatever is switched off
    if not self.flip or not self.randaug:
      draw = dataclasses.replace(draw, flip=draw.flip and self.flip, augments=draw.augments if self.randaug else ())
    return apply_train(img, draw, self.image_size)

  def text(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer.encode([text], self.text_length)
    return ids[0], mask[0]

  def __call__(self, record: dict, index: int, rng: np.random.Generator) -> dict:
    """`rng`: this example's draws (pipeline: example_rng(seed + source, index, epoch))."""
    images = [self.image(img, rng) for img in record["pil"]]
    t = self.fmt
    out = {}
    if t == "nlvr":
      sentence = pre_caption(record["sentence"], 40)
      if self.train and rng.random() < 0.5:  # swap the images and the words left/right
        images = images[::-1]
        sentence = " ".join({"left": "right", "right": "left"}.get(w, w) for w in sentence.split())
      out["images"] = np.stack(images)
      out["ids"], out["mask"] = self.text(sentence)
      out["label"] = np.int32(record["label"] in (True, 1, "True", "true"))
      return out
    out["images"] = images[0]
    out["idx"] = np.int32(record.get("image_id", index) if isinstance(record.get("image_id"), int) else index)
    if t == "eval":
      return dict(out, **self.references(record, index))
    if t == "vqa":
      out["ids"], out["mask"] = self.text(pre_question(record["question"]))
      out.update(self.answers(record))
      if not self.train:  # the evaluators score against every annotator's raw answer
        raw = record.get("answer", [])
        raw = ([raw] if isinstance(raw, str) else list(raw))[: self.max_captions]
        out["answers"] = np.array(raw + [""] * (self.max_captions - len(raw)))
        out["num_answers"] = np.int32(len(raw))
        qid = record.get("question_id", index)
        out["question_id"] = np.int64(qid if isinstance(qid, int) else index)
      return out
    caption = record["caption"]
    if isinstance(caption, list):  # several captions per image (TFDS coco): one per (example, epoch)
      caption = caption[int(rng.integers(len(caption)))]
    out["ids"], out["mask"] = self.text(self.prompt + pre_caption(caption, self.max_words))
    return out

  def references(self, record: dict, index: int) -> dict:
    """Every reference caption of an eval record, raw (the scorers tokenise them), and its image id."""
    captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
    if not captions or len(captions) > self.max_captions or not all(isinstance(c, str) for c in captions):
      raise ValueError(
        f"key 'caption' holds {len(captions)} entries: an eval record needs 1 to config.eval.max_captions="
        f"{self.max_captions} caption strings"
      )
    refs = np.array(captions + [""] * (self.max_captions - len(captions)))
    return {"captions": refs, "num_captions": np.int32(len(captions)), "image_id": np.int64(_image_id(record, index))}

  def answers(self, record: dict) -> dict:
    answers = record.get("answer", [])
    answers = [answers] if isinstance(answers, str) else list(answers)
    weights: dict[str, float] = {}
    for a in answers:  # official vqa_dataset: 1/len per occurrence (count/10 for VQA v2); VG 0.2
      weights[a] = weights.get(a, 0.0) + (0.2 if record.get("dataset") == "vg" else 1.0 / len(answers))
    items = sorted(weights.items(), key=lambda kv: -kv[1])[: self.max_answers]
    ids = np.zeros((self.max_answers, self.answer_length), np.int32)
    mask = np.zeros_like(ids)
    w = np.zeros((self.max_answers,), np.float32)
    if items:
      a_ids, a_mask = self.tokenizer.encode([a for a, _ in items], self.answer_length)
      ids[: len(items)], mask[: len(items)] = a_ids, a_mask
      w[: len(items)] = [v for _, v in items]
    return {"answer_ids": ids, "answer_mask": mask, "answer_weight": w}


def _image_id(record: dict, index: int) -> int:
  """The record's integer image_id; else the digits that end its file name (COCO's
  COCO_val2014_000000391895.jpg -> 391895, as the official caption evaluation reads it); else `index`."""
  if isinstance(record.get("image_id"), int):
    return record["image_id"]
  stem = os.path.splitext(os.path.basename(str(record.get("image", ""))))[0]
  digits = re.search(r"(\d+)$", stem)
  return int(digits.group(1)) if digits else index

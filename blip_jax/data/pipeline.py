"""grain input pipelines: sources -> weighted mixture -> per-epoch shuffle, repeat -> shard by process ->
decode + augment + tokenize -> drop and count bad examples -> batch -> prefetch (threads or worker
processes) -> global jax.Arrays.

Each element is first the triple (source k, index i in k, epoch e); its augmentation draws come from
example_rng(seed + k, i, e), so they do not depend on which worker, thread or process made it, and a
restored iterator (`Loader.state` / `Loader.restore`, also what the trainer stores in its orbax
checkpoint) yields exactly the batches the interrupted one would have. With worker processes each
worker batches its own slice of the element stream, so `workers=0` and `workers=2` give different
(each deterministic and resumable) batch orders.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from blip_jax.data.sources import BadExample, DataError, JsonSource, SkipCounter
from blip_jax.data.text import pre_caption, pre_question
from blip_jax.data.tokenizer import Tokenizer
from blip_jax.data.transforms import eval_transform, example_rng, apply_train, sample_train

TASKS = ("pretrain", "retrieval", "caption", "eval", "vqa", "nlvr")
JSON_KIND = {"pretrain": "pretrain", "retrieval": "retrieval", "caption": "retrieval", "eval": "eval",
             "vqa": "vqa", "nlvr": "nlvr"}


class SyntheticSource:
  """The synthetic world as BLIP records: caption (possibly noisy), image_id, clean."""

  def __init__(self, num: int, seed: int = 0, noise: float = 0.0, image_size: int = 96,
               offset: int = 0):
    from blip_jax.data.synthetic import SyntheticWorld

    self.offset = offset  # a held-out range: examples [offset, offset + num) of a larger world
    self.world = SyntheticWorld(offset + num, seed=seed, noise=noise, image_size=image_size,
                                noisy_prefix=offset + num if offset == 0 else offset)
    self.num = num

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, i: int) -> dict:
    img, ex = self.world[self.offset + i]
    return {"pil": [img], "caption": ex.caption, "image_id": self.offset + i, "clean": ex.clean,
            "true_caption": ex.true_caption}


def make_source(spec: dict, task: str):
  """One random-access source from its config entry:
    {"type": "json", "ann": [files], "image_root": dir}
    {"type": "tfds", "name": ..., "split": "train", "data_dir": ...} or {"type": "tfds", "directory": ...}
      (optional "mapping": {"image": feature, "caption": feature, "image_id": feature})
    {"type": "synthetic", "num": N, "seed": 0, "noise": 0.0, "image_size": 96, "offset": 0}
  Any entry may carry "weight" (mixture proportion; default 1)."""
  spec = dict(spec)
  kind = spec.pop("type", None)
  spec.pop("weight", None)
  try:
    if kind == "json":
      return JsonSource(list(spec.pop("ann")), spec.pop("image_root"), JSON_KIND[task],
                        skip_bad_records=spec.pop("skip_bad_records", False), **spec)
    if kind == "tfds":
      from blip_jax.data.tfds_source import TfdsSource
      return TfdsSource(**spec)
    if kind == "synthetic":
      return SyntheticSource(**spec)
  except TypeError as e:  # unknown or missing keys
    raise ValueError(f"data source {kind!r}: {e}") from None
  raise ValueError(f"data source type={kind!r}: must be 'json', 'tfds' or 'synthetic'")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Record -> arrays for one task (reference sections 3, 6, 7). Outputs, per example:
    pretrain / retrieval / caption: images (S, S, 3) f32, ids (L,), mask (L,), idx () int32
    eval: images, idx                          vqa: images, ids, mask (question), answer_ids (A, La),
    answer_mask (A, La), answer_weight (A,)    nlvr: images (2, S, S, 3), ids, mask, label ()
  idx is the record's image_id where it has one (multi-positive ITC), else the source index."""
  task: str
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

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"task={self.task!r}: must be one of {TASKS}")

  def image(self, img, rng) -> np.ndarray:
    if not self.train:
      return eval_transform(img, self.image_size)
    draw = sample_train(rng, img.height, img.width, self.scale)  # same draws whatever is switched off
    if not self.flip or not self.randaug:
      draw = dataclasses.replace(draw, flip=draw.flip and self.flip,
                                 augments=draw.augments if self.randaug else ())
    return apply_train(img, draw, self.image_size)

  def text(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer.encode([text], self.text_length)
    return ids[0], mask[0]

  def __call__(self, record: dict, index: int, rng: np.random.Generator) -> dict:
    """`rng`: this example's draws (pipeline: example_rng(seed + source, index, epoch))."""
    images = [self.image(img, rng) for img in record["pil"]]
    t = self.task
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
      return out
    if t == "vqa":
      out["ids"], out["mask"] = self.text(pre_question(record["question"]))
      out.update(self.answers(record))
      return out
    caption = record["caption"]
    if isinstance(caption, list):  # several captions per image (TFDS coco): one per (example, epoch)
      caption = caption[int(rng.integers(len(caption)))]
    out["ids"], out["mask"] = self.text(self.prompt + pre_caption(caption, self.max_words))
    return out

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


class _Bad:
  """Marks an element whose record could not be used (kept until _SkipBad counts and drops it)."""

  def __init__(self, reason: str):
    self.reason = reason


class _Load:
  """(source, index, epoch) -> preprocessed example, or _Bad naming the file."""

  def __init__(self, sources: Sequence[Any], preprocess: Preprocess, seed: int):
    self.sources, self.preprocess, self.seed = list(sources), preprocess, seed

  def __call__(self, element):
    k, i, epoch = (int(x) for x in element)
    try:
      record = self.sources[k][i]
      return self.preprocess(record, i, example_rng(self.seed + k, i, epoch))
    except BadExample as e:  # unusable input (unreadable image, ...): counted and skipped
      return _Bad(str(e))
    except DataError:
      raise
    except Exception as e:  # anything else is a bug or a misconfiguration: stop, saying where
      raise DataError(f"source {k} example {i} (epoch {epoch}): {type(e).__name__}: {e}") from e


class _SkipBadIterator(grain.DatasetIterator):
  def __init__(self, parent, counter_args):
    super().__init__(parent)
    self._counter = SkipCounter(*counter_args)

  def __next__(self):
    skipped = 0
    while True:
      value = next(self._parent)
      if isinstance(value, _Bad):
        skipped += 1
        self._counter.skip(BadExample(value.reason))  # logs the file; raises past the threshold
        continue
      self._counter.ok()
      value["skipped"] = np.int32(skipped)  # summed per batch by the Loader (counts cross processes)
      return value

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _SkipBad(grain.IterDataset):
  def __init__(self, parent, max_fraction: float, min_seen: int):
    super().__init__(parent)
    self._args = (max_fraction, min_seen)

  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__(), self._args)


def element_stream(lengths: Sequence[int], weights: Sequence[float] | None, seed: int, shuffle: bool = True,
                   num_epochs: int | None = None) -> grain.MapDataset:
  """(source, index, epoch) triples: each source shuffled afresh every epoch and repeated
  (num_epochs=None: forever), then mixed with the given weights."""
  streams = []
  for k, n in enumerate(lengths):
    if n == 0:
      raise DataError(f"data source {k} is empty")
    ds = grain.MapDataset.range(n)
    if shuffle:
      ds = ds.shuffle(seed=seed + 7919 * k)
    ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(lambda pos, i, k=k, n=n: np.array([k, i, pos // n], np.int64))
    streams.append(ds)
  if len(streams) == 1:
    return streams[0]
  return grain.MapDataset.mix(streams, weights)


@dataclasses.dataclass
class LoaderConfig:
  batch_size: int  # per process
  workers: int = 0  # worker processes (0: threads in this process)
  threads: int = 4  # reader threads per process or worker
  prefetch: int = 2  # batches buffered per worker
  max_skip_fraction: float = 0.01
  min_seen: int = 100
  seed: int = 0  # shuffling and augmentation
  shuffle: bool = True
  num_epochs: int | None = None  # None: repeat forever
  drop_remainder: bool = True


class Loader:
  """Host batches (dicts of numpy arrays) with a savable position and skip accounting.

  `state()` -> a json-able dict; `restore(state)`; `grain_iterator` is what grain's orbax handlers
  save. `skipped` / `seen` count examples dropped and examined in this process's stream."""

  def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None, preprocess: Preprocess,
               config: LoaderConfig, process_index: int = 0, process_count: int = 1):
    if config.batch_size < 1:
      raise ValueError(f"batch_size={config.batch_size}: must be >= 1")
    if weights is not None and (len(weights) != len(sources) or min(weights) <= 0):
      raise ValueError(f"mixture weights {list(weights)} must be positive, one per source ({len(sources)})")
    self.config, self.sources = config, list(sources)
    ds = element_stream([len(s) for s in sources], weights, config.seed, config.shuffle, config.num_epochs)
    if process_count > 1:  # each process reads a disjoint slice of the same global stream
      ds = ds[process_index::process_count]
    ds = ds.map(_Load(sources, preprocess, config.seed))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.threads, prefetch_buffer_size=
                                              max(config.threads, config.batch_size)))
    it = _SkipBad(it, config.max_skip_fraction, config.min_seen)
    it = it.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.workers > 0:
      _absl_flags_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers,
                                                        per_worker_buffer_size=config.prefetch))
    self.dataset = it
    self.grain_iterator = iter(it)
    self.seen = self.skipped = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.grain_iterator))
    skipped = int(batch.pop("skipped").sum())
    n = len(next(iter(batch.values())))
    self.seen += n + skipped
    self.skipped += skipped
    c = self.config
    if self.seen >= c.min_seen and self.skipped > c.max_skip_fraction * self.seen:
      raise DataError(f"{self.skipped} of {self.seen} examples skipped ({self.skipped / self.seen:.1%} > "
                      f"max_skip_fraction {c.max_skip_fraction:.1%}); the log names the files")
    return batch

  def state(self) -> dict:
    return self.grain_iterator.get_state()

  def restore(self, state: dict) -> None:
    self.grain_iterator.set_state(state)

  def close(self) -> None:
    """Stop worker processes and reader threads (they otherwise run until garbage collection)."""
    close = getattr(self.grain_iterator, "close", None)
    if close is not None:
      close()


def _absl_flags_parsed() -> None:
  """grain worker processes read absl flags; outside absl.app.run they are unparsed and grain fails
  with UnparsedFlagAccessError (reference section 11)."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def global_batch(batch: dict, sharding) -> dict:
  """Per-process numpy batch -> global jax.Arrays laid out by `sharding` (leading axis = batch)."""
  import jax

  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


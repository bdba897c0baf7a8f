"""The grain loader: sources -> weighted mixture -> per-epoch shuffle, repeat -> shard by process ->
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
import logging
from typing import Any, Sequence

import grain
import numpy as np

from blip_jax.data.preprocess import Preprocess
from blip_jax.data.sources import BadExample, DataError
from blip_jax.data.transforms import example_rng


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
      return _Bad(f"{e} [source {k}: {self._describe(k, i)}]")
    except Exception as e:  # anything else is a bug or a misconfiguration: stop, saying where
      raise DataError(f"source {k} example {i} (epoch {epoch}; {self._describe(k, i)}): {type(e).__name__}: {e}") from e

  def _describe(self, k: int, i: int) -> str:
    describe = getattr(self.sources[k], "describe", None)
    return describe(i) if describe else f"example {i}"


# More unreadable examples than this in a row is a misconfiguration, not bad luck: stop, naming one.
MAX_CONSECUTIVE_BAD = 1000


class _SkipBadIterator(grain.DatasetIterator):
  """Drops _Bad elements, logging each with its file; every kept example carries how many were
  dropped before it, so the Loader counts skips across threads, workers and processes and applies the
  threshold once."""

  def __next__(self):
    skipped = 0
    while True:
      value = next(self._parent)
      if isinstance(value, _Bad):
        skipped += 1
        logging.warning("skipped example: %s", value.reason)
        if skipped >= MAX_CONSECUTIVE_BAD:  # e.g. a wrong image_root: never spin forever
          raise DataError(
            f"{skipped} examples in a row were unreadable (the last: {value.reason}); is image_root right?"
          )
        continue
      value["skipped"] = np.int32(skipped)  # summed per batch by the Loader (counts cross processes)
      return value

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _SkipBad(grain.IterDataset):
  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__())


def element_stream(
  lengths: Sequence[int],
  weights: Sequence[float] | None,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
) -> grain.MapDataset:
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


class _ProcessBlocks(grain.MapDataset):
  """Process p's share of a global element stream cut into global batches of `count * local` elements:
  the p-th contiguous block of `local` elements of each. The global batch that
  `make_array_from_process_local_data` assembles (process 0's rows first) is then exactly the batch
  one process would read, so a run on N processes sees the same examples in the same order as on one."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, local: int, index: int, count: int):
    super().__init__(parent)
    self._local, self._index, self._count = local, index, count
    self._length = len(parent) // (local * count) * local

  def __len__(self) -> int:
    return self._length

  def _global(self, i: int) -> int:
    batch, row = divmod(i, self._local)
    return (batch * self._count + self._index) * self._local + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global(index)]

  def __str__(self) -> str:
    return f"ProcessBlocks(local={self._local}, process={self._index} of {self._count})"


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
  """Host batches (dicts of numpy arrays) with a savable position and skip accounting: the one place
  the `max_skip_fraction` threshold is applied (after `min_seen` examples).

  `state()` -> a json-able dict; `restore(state)`; `grain_iterator` is what grain's orbax handlers
  save. `skipped` / `seen` count examples dropped and examined in this process's stream."""

  def __init__(
    self,
    sources: Sequence[Any],
    weights: Sequence[float] | None,
    preprocess: Preprocess,
    config: LoaderConfig,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if config.batch_size < 1:
      raise ValueError(f"batch_size={config.batch_size}: must be >= 1")
    if weights is not None and (len(weights) != len(sources) or min(weights) <= 0):
      raise ValueError(f"mixture weights {list(weights)} must be positive, one per source ({len(sources)})")
    self.config, self.sources, self.process_count = config, list(sources), process_count
    ds = element_stream([len(s) for s in sources], weights, config.seed, config.shuffle, config.num_epochs)
    if process_count > 1:  # each process reads its block of every global batch of the same stream
      ds = _ProcessBlocks(ds, config.batch_size, process_index, process_count)
    ds = ds.map(_Load(sources, preprocess, config.seed))
    it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=config.threads, prefetch_buffer_size=max(config.threads, config.batch_size))
    )
    it = _SkipBad(it)
    it = it.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.workers > 0:
      _absl_flags_parsed()
      it = it.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.workers, per_worker_buffer_size=config.prefetch)
      )
    self.dataset = it
    self.grain_iterator = iter(it)
    # records dropped at load time (skip_bad_records) count like unreadable examples in `skipped` and
    # `seen`; their share of the annotation records is checked against the threshold once, here
    self.dropped = sum(getattr(src, "skipped_records", 0) for src in self.sources)
    self.seen = self.skipped = self.dropped
    records = sum(len(src) for src in self.sources) + self.dropped
    if self.dropped > config.max_skip_fraction * records:
      raise DataError(
        f"{self.dropped} of {records} annotation records dropped as malformed ({self.dropped / records:.1%} > "
        f"max_skip_fraction {config.max_skip_fraction:.1%}); the log names them"
      )

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.grain_iterator))
    skipped = int(batch.pop("skipped").sum())
    n = len(next(iter(batch.values())))
    self.seen += n + skipped
    self.skipped += skipped
    c = self.config
    seen, skipped = self.seen - self.dropped, self.skipped - self.dropped  # examples read in this stream
    if seen >= c.min_seen and skipped > c.max_skip_fraction * seen:
      raise DataError(
        f"{skipped} of {seen} examples skipped ({skipped / seen:.1%} > "
        f"max_skip_fraction {c.max_skip_fraction:.1%}); the log names the files"
      )
    return batch

  def state(self) -> dict:
    """The position (grain's iterator state) and the skip counters: json-able."""
    return {"iterator": self.grain_iterator.get_state(), "seen": self.seen, "skipped": self.skipped}

  def restore(self, state: dict) -> None:
    if "iterator" not in state:  # checkpoints written before the counters were saved
      state = {"iterator": state, "seen": self.seen, "skipped": self.skipped}
    self.grain_iterator.set_state(state["iterator"])
    self.seen, self.skipped = int(state["seen"]), int(state["skipped"])

  def reposition(self, global_batches: int, saved: list[dict]) -> None:
    """Continue after `global_batches` global batches from positions saved by another number of
    processes (`saved`: one `state()` per old process). Exact when no example was skipped (skipped
    ones moved the old streams further; their elements may be read again); the skip counters are
    shared out evenly."""
    if any(not isinstance(s.get("iterator"), dict) or "next_index" not in s["iterator"] for s in saved):
      raise DataError(
        "the checkpoint's data position was saved by a different number of processes with grain worker "
        "processes (config.data.workers > 0); it cannot be carried over: resume with the same number of "
        "processes, or set data.workers=0 for the resume"
      )
    self.grain_iterator.set_state({"next_index": global_batches * self.config.batch_size})
    n = self.process_count
    self.seen = sum(int(s.get("seen", 0)) for s in saved) // n
    self.skipped = sum(int(s.get("skipped", 0)) for s in saved) // n

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


def to_global_arrays(batch: dict, sharding) -> dict:
  """Per-process numpy batch -> global jax.Arrays laid out by `sharding` (leading axis = batch)."""
  import jax

  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

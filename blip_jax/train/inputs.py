"""The experiment config's `data` and `eval` sections -> tokenizer, training loader, held-out pairs.

config.data:
  sources: list of source dicts (see data.sources.make_source), each with an optional "weight"
  tokenizer: {"type": "wordpiece", "vocab": path} | {"type": "sentencepiece", "model": path}
             | {"type": "synthetic", "vocab_size": n, "corpus": n}  (SentencePiece trained at start-up on
             the synthetic world's texts; deterministic, written to workdir/tokenizer.model)
  workers, threads, prefetch, seed, max_skip_fraction, scale, flip, randaug
config.eval: sources (held-out, read as the "eval" record format: every caption of an image), num
  (images; 0 = all), batch, every (steps; 0 = only at the end), max_captions, and what the task's
  evaluator reads (k_test; num_beams, max_length, min_length)
config.prompt: captioning's decoder prompt ("a picture of "), prepended to every training caption
"""

from __future__ import annotations

import os
import shutil
import tempfile

from blip_jax.data.loader import Loader, LoaderConfig
from blip_jax.data.preprocess import Preprocess
from blip_jax.data.sources import TASK_FORMAT, make_source
from blip_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer, WordPieceTokenizer, train_sentencepiece


def synthetic_corpus(num: int, seed: int = 0) -> list[str]:
  """Every kind of text the synthetic world produces (captions, questions, answers, statements)."""
  from blip_jax.data.synthetic import SyntheticWorld

  world = SyntheticWorld(num, seed=seed)
  texts = []
  for i in range(num):
    texts.append(world.example(i).true_caption)
    texts += [t for qa in world.vqa(i) for t in qa]
    texts.append(world.nlvr(i)[2])
  return texts


def tokenizer(cfg, workdir: str, write: bool = True) -> Tokenizer:
  t = cfg.data.tokenizer
  kind = t.get("type")
  if kind == "wordpiece":
    return WordPieceTokenizer(t["vocab"])
  if kind == "sentencepiece":
    return SentencePieceTokenizer(t["model"])
  if kind == "synthetic":
    with tempfile.TemporaryDirectory() as tmp:  # every process trains its own (identical) copy
      path = os.path.join(tmp, "tokenizer.model")
      tok = train_sentencepiece(synthetic_corpus(t.get("corpus", 2000)), path, t.get("vocab_size", 100))
      if write:
        os.makedirs(workdir, exist_ok=True)
        shutil.copy(path, os.path.join(workdir, "tokenizer.model"))
      return tok
  raise ValueError(f"config.data.tokenizer.type={kind!r}: must be 'wordpiece', 'sentencepiece' or 'synthetic'")


def preprocess(cfg, tok: Tokenizer, image_size: int, train: bool, fmt: str | None = None) -> Preprocess:
  d = cfg.data
  return Preprocess(
    fmt or TASK_FORMAT[cfg.model.task],
    tok,
    image_size,
    text_length=cfg.text_length,
    train=train,
    scale=tuple(d.scale),
    flip=d.flip,
    randaug=d.randaug,
    prompt=cfg.get("prompt", "") if train else "",
    max_captions=cfg.eval.get("max_captions", 8),
  )


def _sources(cfg, specs, where: str, fmt: str):
  if not specs:
    raise ValueError(f"{where}: no data sources configured")
  out = []
  for spec in specs:
    spec = dict(spec)
    if spec.get("type") == "json" and "max_image_pixels" not in spec and cfg.data.get("max_image_pixels"):
      spec["max_image_pixels"] = cfg.data.max_image_pixels
    out.append(make_source(spec, fmt))
  return out, [float(dict(s).get("weight", 1.0)) for s in specs]


def train_loader(cfg, tok: Tokenizer, image_size: int, process_index: int, process_count: int) -> Loader:
  d = cfg.data
  sources, weights = _sources(cfg, d.sources, "config.data.sources", TASK_FORMAT[cfg.model.task])
  lc = LoaderConfig(
    batch_size=cfg.global_batch // process_count,
    workers=d.workers,
    threads=d.threads,
    prefetch=d.prefetch,
    max_skip_fraction=d.max_skip_fraction,
    seed=d.seed,
  )
  return Loader(
    sources,
    weights if len(sources) > 1 else None,
    preprocess(cfg, tok, image_size, True),
    lc,
    process_index,
    process_count,
  )


def eval_loader(cfg, tok: Tokenizer, image_size: int, fmt: str = "eval") -> Loader:
  """Held-out examples in order, once, eval transform (every process reads all): images with all their
  captions (fmt "eval"), or the records of another format (vqa, nlvr)."""
  sources, _ = _sources(cfg, cfg.eval.sources, "config.eval.sources", fmt)
  lc = LoaderConfig(
    batch_size=cfg.eval.batch,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    threads=cfg.data.threads,
    max_skip_fraction=cfg.data.max_skip_fraction,
  )
  return Loader(sources, None, preprocess(cfg, tok, image_size, False, fmt), lc)

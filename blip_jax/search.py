"""Text-to-image search over an index written by `python -m blip_jax.features`.

  python -m blip_jax.search --index DIR "a dog on a sofa" ["another query" ...] [--top 5]
      [--rerank [--rerank-k 16]] [--checkpoint CKPT (default: the index's)] [--dtype bfloat16]

Ranks the indexed images by the cosine of their ITC features with the query's; --rerank re-scores the
best --rerank-k with the ITM head (reading those images again) and orders them by match probability.
Prints, per query, `rank<TAB>score<TAB>path` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from blip_jax.cli import load_model, model_arguments, run


def read_index(directory: str) -> tuple[np.ndarray, list[str], dict]:
  try:
    with open(os.path.join(directory, "index.json")) as f:
      meta = json.load(f)
    with open(os.path.join(directory, "images.json")) as f:
      paths = json.load(f)
    feats = np.load(os.path.join(directory, "image_features.npy"))
  except FileNotFoundError as e:
    raise ValueError(
      f"{directory}: not a features index with images ({e.filename} missing; see blip_jax.features)"
    ) from None
  if len(paths) != len(feats):
    raise ValueError(f"{directory}: {len(paths)} paths but {len(feats)} feature rows")
  return feats, paths, meta


def search(model, feats: np.ndarray, paths: list[str], query: str, top: int, rerank_k: int = 0):
  """[(path, score)] best first: cosine, or with rerank_k > 0 the ITM probability of the best rerank_k."""
  sims = feats @ model.text_features([query])[0]
  order = np.argsort(-sims, kind="stable")
  if not rerank_k:
    return [(paths[i], float(sims[i])) for i in order[:top]]
  best = order[:rerank_k]
  probs = model.itm([paths[i] for i in best], [query])[:, 0]
  ranked = sorted(zip(best, probs), key=lambda x: -x[1])
  return [(paths[i], float(p)) for i, p in ranked[:top]]


def _main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.search", description=__doc__.split("\n\n")[0])
  p.add_argument("queries", nargs="+")
  p.add_argument("--index", required=True, help="a directory written by python -m blip_jax.features")
  p.add_argument("--top", type=int, default=5)
  p.add_argument("--rerank", action="store_true", help="re-score the best --rerank-k by ITM")
  p.add_argument("--rerank-k", type=int, default=16)
  model_arguments(p, checkpoint_required=False)
  a = p.parse_args(argv)
  feats, paths, meta = read_index(a.index)
  a.checkpoint = a.checkpoint or meta["checkpoint"]
  a.task = a.task or meta.get("task")
  model = load_model(a)
  for query in a.queries:
    print(f"# {query}")
    for rank, (path, score) in enumerate(search(model, feats, paths, query, a.top, a.rerank_k if a.rerank else 0)):
      print(f"{rank + 1}\t{score:.4f}\t{path}")
  return 0


def main(argv=None) -> int:
  """The CLI: exit status 0, or 1 with one error line for bad input (see blip_jax.cli.run)."""
  return run(_main, argv)


def cli():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

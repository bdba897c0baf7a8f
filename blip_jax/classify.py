"""Zero-shot image classification with a BLIP model: each label is turned into texts by prompt
templates, its ITC text feature is the normalised mean over the templates (prompt ensembling), and
images take the label of highest cosine; --rerank re-scores the best --rerank-k labels with the ITM
head.

  python -m blip_jax.classify --checkpoint CKPT --labels "cat,dog,bird" IMAGE... [--templates
      "a picture of a {}.;a photo of a {}."] [--rerank [--rerank-k 3]] [--dtype bfloat16]

Prints `IMAGE<TAB>label<TAB>probability` and the runners-up; probabilities are the softmax of
cosine / the model's ITC temperature (or of the ITM match logits' probabilities with --rerank).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from blip_jax.cli import load_model, model_arguments, run

TEMPLATES = "a picture of a {}.;a photo of a {}."


def label_features(model, labels: list[str], templates: list[str]) -> np.ndarray:
  """(L, E): per label the normalised mean of its templates' text features."""
  feats = model.text_features([t.format(label) for label in labels for t in templates])
  feats = feats.reshape(len(labels), len(templates), -1).mean(1)
  return feats / np.linalg.norm(feats, axis=-1, keepdims=True)


def classify(model, images, labels: list[str], templates: list[str], rerank_k: int = 0) -> np.ndarray:
  """(N, L) label probabilities per image."""
  cos = model.image_features(images) @ label_features(model, labels, templates).T
  temp = float(np.clip(np.asarray(model.params.get("temp", 0.07), np.float32), 0.001, 0.5))
  logits = cos / temp
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  if rerank_k:
    for i, image in enumerate(images):
      best = np.argsort(-probs[i])[:rerank_k]
      itm = model.itm([image], [templates[0].format(labels[j]) for j in best])[0]
      probs[i] = 0.0
      probs[i, best] = itm / itm.sum()
  return probs


def _main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.classify", description=__doc__.split("\n\n")[0])
  p.add_argument("images", nargs="+")
  p.add_argument("--labels", required=True, help="comma-separated class names")
  p.add_argument("--templates", default=TEMPLATES, help="';'-separated prompts with {} for the label")
  p.add_argument("--rerank", action="store_true")
  p.add_argument("--rerank-k", type=int, default=3)
  model_arguments(p)
  a = p.parse_args(argv)
  labels = [x.strip() for x in a.labels.split(",") if x.strip()]
  templates = [t for t in a.templates.split(";") if t.strip()]
  if len(labels) < 2:
    raise ValueError(f"--labels {a.labels!r}: give at least two comma-separated labels")
  if not templates or not all("{}" in t for t in templates):
    raise ValueError(f"--templates {a.templates!r}: every template needs a {{}} for the label")
  model = load_model(a)
  probs = classify(model, a.images, labels, templates, a.rerank_k if a.rerank else 0)
  for path, row in zip(a.images, probs):
    order = np.argsort(-row)
    rest = ", ".join(f"{labels[j]} {row[j]:.3f}" for j in order[1:3])
    print(f"{path}\t{labels[order[0]]}\t{row[order[0]]:.4f}\t({rest})")
  return 0


def main(argv=None) -> int:
  """The CLI: exit status 0, or 1 with one error line for bad input (see blip_jax.cli.run)."""
  return run(_main, argv)


def cli():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

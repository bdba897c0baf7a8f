"""Embed a collection of images and / or texts with a BLIP model, for search and your own use.

  python -m blip_jax.features --checkpoint CKPT --out DIR [--images FOLDER|LIST.json] [--texts FILE.txt|LIST.json]
      [--image-root DIR] [--skip-bad] [--chunk 1024] [--dtype bfloat16] [--batch 32]

Writes DIR/image_features.npy (N, E) float32 with DIR/images.json (the N paths, in row order),
DIR/text_features.npy (T, E) with DIR/texts.json, and DIR/index.json (checkpoint, counts, skipped
images). Features are the projected, L2-normalised ITC features (cosine = dot product). Work is done
in chunks saved under DIR/parts as they finish: a killed run rerun with the same command continues
and ends with the same files. Images: a folder (searched recursively for image files, sorted) or a
json list of paths or of BLIP records with "image" (relative to --image-root). An unreadable image is
an error naming it, unless --skip-bad (then it is listed in index.json and left out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from blip_jax.cli import Progress, load_model, model_arguments, run
from blip_jax.data.sources import BadExample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_images(source: str, root: str = "") -> list[str]:
  """The image paths of a folder (recursive, sorted) or a json list (paths or records with "image")."""
  if os.path.isdir(source):
    found = []
    for d, _, names in os.walk(source):
      found += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
      raise ValueError(f"{source}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)
  items = _json_list(source)
  paths = [i.get("image") if isinstance(i, dict) else i for i in items]
  bad = [n for n, p in enumerate(paths) if not isinstance(p, str)]
  if bad:
    raise ValueError(f"{source}: entry {bad[0]} is neither a path nor a record with an 'image' path")
  return [os.path.join(root, p) for p in paths]


def list_texts(source: str) -> list[str]:
  """One text per line of a .txt file, or a json list of strings (or records with "caption")."""
  if source.endswith(".txt"):
    with open(source, encoding="utf-8") as f:
      texts = [line.rstrip("\n") for line in f]
  else:
    texts = [i.get("caption") if isinstance(i, dict) else i for i in _json_list(source)]
  for n, t in enumerate(texts):
    if not isinstance(t, str) or not t.strip():
      raise ValueError(f"{source}: text {n} is empty or not a string")
  return texts


def _json_list(path: str) -> list:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file or folder") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed json at line {e.lineno}: {e.msg}") from None
  if not isinstance(data, list) or not data:
    raise ValueError(f"{path}: expected a non-empty json list")
  return data


def _save_atomic(path: str, array: np.ndarray) -> None:
  with open(path + ".tmp", "wb") as f:
    np.save(f, array)
  os.replace(path + ".tmp", path)


def embed(model, items: list, kind: str, out: str, chunk: int, skip_bad: bool) -> tuple[np.ndarray, list, list]:
  """Features of `items` chunk by chunk, each chunk saved under out/parts (reused when present).
  Returns (features, kept items, skipped [path, reason])."""
  parts = os.path.join(out, "parts")
  os.makedirs(parts, exist_ok=True)
  progress = Progress(len(items), kind)
  feats, kept, skipped = [], [], []
  for n, start in enumerate(range(0, len(items), chunk)):
    batch = items[start : start + chunk]
    path = os.path.join(parts, f"{kind}_{n:05d}.npz")
    if not os.path.exists(path):
      good, bad = list(range(len(batch))), []
      if kind == "images":
        pixels, good, bad = _readable(model, batch, skip_bad)
        f = model.pixel_features(pixels) if good else np.zeros((0, 0), np.float32)
      else:
        f = model.text_features(batch)
      with open(path + ".tmp", "wb") as fh:
        np.savez(fh, features=f, kept=np.asarray(good, np.int64), bad=np.asarray([b for b, _ in bad], np.int64))
      os.replace(path + ".tmp", path)
      skipped += [[batch[b], reason] for b, reason in bad]
    else:
      with np.load(path) as z:
        f, good = z["features"], z["kept"].tolist()
        skipped += [[batch[b], "unreadable (see the first run's log)"] for b in z["bad"].tolist()]
    if len(f):
      feats.append(f)
    kept += [batch[i] for i in good]
    progress.update(min(start + chunk, len(items)))
  return (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), kept, skipped


def _readable(model, paths: list[str], skip_bad: bool):
  """(pixels of the readable images, their indices, [(index, reason)] of the others)."""
  pixels, good, bad = [], [], []
  for i, p in enumerate(paths):
    try:
      pixels.append(model.preprocess([p])[0])
      good.append(i)
    except BadExample as e:
      if not skip_bad:
        raise
      bad.append((i, str(e)))
  return (np.stack(pixels) if pixels else None), good, bad


def _main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.features", description=__doc__.split("\n\n")[0])
  model_arguments(p)
  p.add_argument("--out", required=True)
  p.add_argument("--images", help="a folder of images or a json list")
  p.add_argument("--image-root", default="", help="prefix of the paths in an --images json")
  p.add_argument("--texts", help="a .txt (one per line) or a json list")
  p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed in index.json)")
  p.add_argument("--chunk", type=int, default=1024, help="items per saved part (the resume granularity)")
  a = p.parse_args(argv)
  if not a.images and not a.texts:
    p.error("give --images and / or --texts")
  model = load_model(a)
  os.makedirs(a.out, exist_ok=True)
  index = {"checkpoint": os.path.abspath(a.checkpoint), "task": model.config.task, "dtype": a.dtype}
  if a.images:
    feats, kept, skipped = embed(model, list_images(a.images, a.image_root), "images", a.out, a.chunk, a.skip_bad)
    _save_atomic(os.path.join(a.out, "image_features.npy"), feats)
    with open(os.path.join(a.out, "images.json"), "w") as f:
      json.dump(kept, f)
    index.update(images=len(kept), skipped=skipped)
  if a.texts:
    feats, kept, _ = embed(model, list_texts(a.texts), "texts", a.out, a.chunk, False)
    _save_atomic(os.path.join(a.out, "text_features.npy"), feats)
    with open(os.path.join(a.out, "texts.json"), "w") as f:
      json.dump(kept, f)
    index["texts"] = len(kept)
  index["dim"] = int(feats.shape[1])
  with open(os.path.join(a.out, "index.json"), "w") as f:
    json.dump(index, f, indent=2)
  print(f"wrote {a.out}: " + ", ".join(f"{k} {index[k]}" for k in ("images", "texts") if k in index))
  if index.get("skipped"):
    print(f"skipped {len(index['skipped'])} unreadable images (listed in index.json)")
  return 0


def main(argv=None) -> int:
  """The CLI: exit status 0, or 1 with one error line for bad input (see blip_jax.cli.run)."""
  return run(_main, argv)


def cli():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

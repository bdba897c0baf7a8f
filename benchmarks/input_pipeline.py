"""Input pipeline throughput: our train transform (JPEG decode + RandomResizedCrop + flip +
RandomAugment + normalise) vs a plain PIL implementation of the same steps, in the same run, at 224
and 384 px; then the whole grain loader (threads / worker processes); then whether the loader keeps
up with the demo config's train step on this machine.

  python -m benchmarks.input_pipeline [--images 64] [--source-px 500]

Images are COCO-sized JPEGs (500 x 375 by default) rendered from the synthetic world with texture.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageOps

from blip_jax.data.loader import Loader, LoaderConfig
from blip_jax.data.preprocess import Preprocess
from blip_jax.data.sources import load_image, make_source
from blip_jax.data.synthetic import SyntheticWorld
from blip_jax.data.transforms import MEAN, STD, example_rng, sample_train


def write_jpegs(directory: str, n: int, px: int) -> list[str]:
  world = SyntheticWorld(n, image_size=px)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    img, _ = world[i]
    arr = np.asarray(img.resize((px, px * 3 // 4)), np.int16) + rng.integers(-20, 20, (px * 3 // 4, px, 3))
    path = os.path.join(directory, f"{i:05d}.jpg")
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    paths.append(path)
  return paths


def plain_pil(path: str, size: int, draw) -> np.ndarray:
  """The same steps written the obvious way, independently of blip_jax.data.transforms."""
  img = Image.open(path).convert("RGB")
  top, left, h, w = draw.crop
  img = img.resized = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
  if draw.flip:
    img = ImageOps.mirror(img)
  for op, applied, value in draw.augments:
    if not applied:
      continue
    if op == "AutoContrast":
      img = ImageOps.autocontrast(img)
    elif op == "Equalize":
      img = ImageOps.equalize(img)
    elif op == "Rotate":
      img = img.rotate(value, fillcolor=(128, 128, 128))
    elif op in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
      m = {
        "ShearX": (1, value, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, value, 1, 0),
        "TranslateX": (1, 0, value, 0, 1, 0),
        "TranslateY": (1, 0, 0, 0, 1, value),
      }[op]
      img = img.transform(img.size, Image.AFFINE, m, fillcolor=(128, 128, 128))
  return ((np.asarray(img, np.float32) / 255.0) - MEAN) / STD


def per_image(fn, paths, repeats=1) -> float:
  t0 = time.perf_counter()
  for _ in range(repeats):
    for p in paths:
      fn(p)
  return len(paths) * repeats / (time.perf_counter() - t0)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--images", type=int, default=64)
  ap.add_argument("--source-px", type=int, default=500)
  ap.add_argument("--skip-step", action="store_true", help="skip the demo train-step comparison")
  a = ap.parse_args(argv)
  from blip_jax.data.tokenizer import train_sentencepiece
  from blip_jax.train.inputs import synthetic_corpus

  with tempfile.TemporaryDirectory() as tmp:
    paths = write_jpegs(tmp, a.images, a.source_px)
    tok = train_sentencepiece(synthetic_corpus(200), os.path.join(tmp, "sp.model"), 100)
    print(f"{a.images} JPEGs of {a.source_px}x{a.source_px * 3 // 4}; one process, one thread unless said")
    print(f"{'size':>5} {'ours img/s':>11} {'plain PIL img/s':>16} {'ratio':>6}")
    for size in (224, 384):
      pp = Preprocess("pretrain", tok, size)

      def ours(path, i=[0]):
        i[0] += 1
        img = load_image(path)
        return pp.image(img, example_rng(0, i[0], 0))

      def plain(path, i=[0]):
        i[0] += 1
        with Image.open(path) as im:
          w, h = im.size
        return plain_pil(path, size, sample_train(example_rng(0, i[0], 0), h, w))

      per_image(ours, paths[:4]), per_image(plain, paths[:4])  # warm up
      o, p = per_image(ours, paths), per_image(plain, paths)
      print(f"{size:>5} {o:>11.1f} {p:>16.1f} {o / p:>6.2f}")

    import json

    ann = os.path.join(tmp, "ann.json")
    with open(ann, "w") as f:
      json.dump([{"image": os.path.basename(p), "caption": "a red circle"} for p in paths], f)
    src = make_source({"type": "json", "ann": [ann], "image_root": tmp}, "pretrain")
    print("\nwhole loader at 224 px (decode + augment + tokenize + batch 32), images/s:")
    for threads, workers in ((1, 0), (2, 0), (1, 2)):
      loader = Loader(
        [src], None, Preprocess("pretrain", tok, 224), LoaderConfig(batch_size=32, threads=threads, workers=workers)
      )
      next(loader)
      t0 = time.perf_counter()
      n = 0
      while n < 4 * a.images:
        n += len(next(loader)["ids"])
      print(f"  threads={threads} workers={workers}: {n / (time.perf_counter() - t0):.1f}")
      loader.close()

  if not a.skip_step:
    keep_up()


def keep_up():
  """The demo config's loader vs its compiled train step, measured one after the other."""
  import jax

  from blip_jax.tasks.pretrain import init_state, make_train_step
  from blip_jax.train import build, inputs
  from experiments import demo

  cfg = demo.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    tok = inputs.tokenizer(cfg, tmp, write=False)
  cfg.mesh = (1, 1, 1)
  exp = build.experiment(cfg, 1, tokenizer=tok)
  model, obj, tx = exp.model, exp.objective, exp.optimizer
  loader = inputs.train_loader(cfg, tok, model.vision.image_size, 0, 1)
  batches = [next(loader) for _ in range(3)]
  t0 = time.perf_counter()
  for _ in range(20):
    next(loader)
  load_s = (time.perf_counter() - t0) / 20
  state = jax.jit(lambda r: init_state(model, obj, tx, r))(jax.random.key(0))
  step = jax.jit(make_train_step(model, obj, tx), donate_argnums=0)
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(20):
    state, m = step(state, batches[i % 3])
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / 20
  print(
    f"\ndemo config (batch {cfg.global_batch}, {cfg.model.image_size} px): loader {load_s * 1e3:.1f} ms/batch, "
    f"train step {step_s * 1e3:.1f} ms -> loader/step = {load_s / step_s:.2f} "
    f"({'keeps up' if load_s < step_s else 'does NOT keep up'}; both share the same 2 cores in a run)"
  )


if __name__ == "__main__":
  main()

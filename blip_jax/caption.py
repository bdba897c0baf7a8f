"""Caption images with a BLIP checkpoint (blip_jax, Hugging Face or Salesforce; any task with the
image-grounded decoder: caption or pretrain).

  python -m blip_jax.caption --checkpoint PATH [--tokenizer vocab.txt|tokenizer.model] IMAGE...
      [--beams 3 --max-length 20 --min-length 5 | --sample --top-p 0.9 --num-samples 3]
      [--prompt "a picture of "] [--repetition-penalty 1.0]

Prints one line per caption: `IMAGE<TAB>caption`. The tokenizer is found next to the checkpoint
(vocab.txt or tokenizer.model, also one directory up, where the trainer writes it) unless given.
Any checkpoint with the decoder works: caption, or pretrain narrowed to its decoder (`interop.load`).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import interop
from blip_jax.data.sources import BadExample, load_image
from blip_jax.data.transforms import eval_transform


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.caption", description=__doc__.split("\n\n")[0])
  p.add_argument("images", nargs="+")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--tokenizer")
  p.add_argument("--prompt", default="a picture of ")
  p.add_argument("--beams", type=_positive, default=3, help="1: greedy")
  p.add_argument("--max-length", type=_positive, default=20, help="counts [DEC] and the prompt (official)")
  p.add_argument("--min-length", type=int, default=5)
  p.add_argument("--repetition-penalty", type=float, default=1.0)
  p.add_argument("--sample", action="store_true", help="nucleus sampling instead of beam search")
  p.add_argument("--top-p", type=float, default=0.9)
  p.add_argument("--top-k", type=int, default=50)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--num-samples", type=_positive, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch", type=_positive, default=16)
  a = p.parse_args(argv)
  from blip_jax.generate.search import generate
  from blip_jax.models import Blip

  try:
    ckpt = interop.load(a.checkpoint, task="caption", tokenizer=a.tokenizer, need_tokenizer=True)
  except (interop.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  config, params, tok = ckpt.config, ckpt.params, ckpt.tokenizer
  prompt = jnp.asarray(tok.tokenize_ids(a.prompt), jnp.int32) if a.prompt else jnp.zeros((0,), jnp.int32)
  if 1 + len(prompt) >= a.max_length:
    print(
      f"error: --max-length {a.max_length} leaves no room after [DEC] + the {len(prompt)} prompt tokens "
      f"of {a.prompt!r}",
      file=sys.stderr,
    )
    return 2
  if a.sample:
    method = "sample"
    opts = dict(
      max_length=a.max_length,
      min_length=a.min_length,
      top_p=a.top_p,
      top_k=a.top_k,
      temperature=a.temperature,
      num_samples=a.num_samples,
      repetition_penalty=a.repetition_penalty,
    )
  else:
    method = "beam" if a.beams > 1 else "greedy"
    opts = dict(max_length=a.max_length, min_length=a.min_length, repetition_penalty=a.repetition_penalty)
    if a.beams > 1:
      opts["num_beams"] = a.beams
  encode = jax.jit(lambda prm, x: Blip(config).apply({"params": prm}, x, method=Blip.encode_image))
  size, status = config.vision.image_size, 0
  paths, arrays = [], []
  for path in a.images:
    try:
      arrays.append(eval_transform(load_image(path), size))
      paths.append(path)
    except BadExample as e:
      print(f"error: {e}", file=sys.stderr)
      status = 1
  rng = jax.random.key(a.seed)
  for start in range(0, len(arrays), a.batch):
    chunk = np.stack(arrays[start : start + a.batch])
    n = len(chunk)
    if n < a.batch and len(arrays) > a.batch:  # keep one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], a.batch - n, 0)])
    img = encode(params, jnp.asarray(chunk))
    ids, lengths = generate(
      params,
      config.text,
      img,
      prompt,
      jax.random.fold_in(rng, start),
      method=method,
      options=tuple(sorted(opts.items())),
    )
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    per = a.num_samples if a.sample else 1
    for r in range(n * per):
      text = tok.decode(ids[r, 1 + len(prompt) : lengths[r]])
      print(f"{paths[start + r // per]}\t{text.strip()}")
  return status


def run():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()

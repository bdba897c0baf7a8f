"""Caption images with a BLIP checkpoint (blip_jax, Hugging Face or Salesforce; any task with the
image-grounded decoder: caption or pretrain).

  python -m blip_jax.caption --checkpoint PATH [--tokenizer vocab.txt|tokenizer.model] IMAGE...
      [--beams 3 --max-length 20 --min-length 5 | --sample --top-p 0.9 --num-samples 3]
      [--prompt "a picture of "] [--repetition-penalty 1.0] [--num-captions N --scores] [--dtype bfloat16]

Prints one line per caption: `IMAGE<TAB>caption`. The tokenizer is found next to the checkpoint
(vocab.txt or tokenizer.model, also one directory up, where the trainer writes it) unless given.
Any checkpoint with the decoder works: caption, or pretrain narrowed to its decoder (`interop.load`).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from blip_jax import interop
from blip_jax.data.sources import BadExample


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
  p.add_argument("--num-captions", type=_positive, default=1, help="beam search: the n best (<= --beams)")
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
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--scores", action="store_true", help="a third column: sequences_score / sample log-probability")
  a = p.parse_args(argv)
  import blip_jax

  try:
    model = blip_jax.load(a.checkpoint, "caption", a.dtype, tokenizer=a.tokenizer, batch_size=a.batch)
  except (interop.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  status, paths, pixels = 0, [], []
  for path in a.images:  # an unreadable image is reported; the others are still captioned
    try:
      pixels.append(model.preprocess([path])[0])
      paths.append(path)
    except BadExample as e:
      print(f"error: {e}", file=sys.stderr)
      status = 1
  if not paths:
    return status
  n = a.num_samples if a.sample else a.num_captions
  kw = dict(
    num_beams=a.beams,
    max_length=a.max_length,
    min_length=a.min_length,
    prompt=a.prompt,
    num_captions=n,
    sample=a.sample,
    top_p=a.top_p,
    top_k=a.top_k,
    temperature=a.temperature,
    repetition_penalty=a.repetition_penalty,
    seed=a.seed,
  )
  try:
    results = model.caption_pixels(np.stack(pixels), **kw)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path, captions in zip(paths, results):
    for text, score in captions:
      print(f"{path}\t{text}" + (f"\t{score:.4f}" if a.scores else ""))
  return status


def run():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()

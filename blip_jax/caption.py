"""Caption images with a BLIP checkpoint (blip_jax, Hugging Face or Salesforce; any task with the
image-grounded decoder: caption or pretrain).

  python -m blip_jax.caption --checkpoint PATH [--tokenizer vocab.txt|tokenizer.model] IMAGE...
      [--beams 3 --max-length 20 --min-length 5 | --sample --top-p 0.9 --num-samples 3]
      [--prompt "a picture of "] [--repetition-penalty 1.0]

Prints one line per caption: `IMAGE<TAB>caption`. The tokenizer is found next to the checkpoint
(vocab.txt or tokenizer.model, also one directory up, where the trainer writes it) unless given.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.data.sources import BadExample, load_image
from blip_jax.data.transforms import eval_transform


def find_tokenizer(checkpoint: str, explicit: str | None):
  from blip_jax.data.tokenizer import SentencePieceTokenizer, WordPieceTokenizer

  candidates = [explicit] if explicit else [
      os.path.join(d, n) for d in (checkpoint, os.path.dirname(os.path.abspath(checkpoint)))
      for n in ("vocab.txt", "tokenizer.model")]
  for path in candidates:
    if path and os.path.isfile(path):
      return SentencePieceTokenizer(path) if path.endswith(".model") else WordPieceTokenizer(path)
  raise FileNotFoundError(f"no tokenizer: looked for {candidates}; pass --tokenizer (a bert-base-uncased "
                          "vocab.txt for the official checkpoints)")


def load_caption_model(path: str):
  """(BlipConfig for task caption, params) from any checkpoint that has the decoder."""
  from blip_jax import convert
  from blip_jax.interop.checkpoint import CheckpointError
  from blip_jax.interop.narrow import select_params
  from blip_jax.models.blip import param_shapes

  fmt = convert.infer_src_format(path)
  ckpt = convert.load(path, fmt, None if fmt == "blip_jax" else "caption", None, ())
  if ckpt.config.task not in ("caption", "pretrain"):
    raise CheckpointError(path, f"task {ckpt.config.task!r} has no image-grounded decoder (need caption or pretrain)")
  config = ckpt.config.replace(task="caption")  # pretrain -> caption: the decoder's tensors are shared
  return config, select_params(param_shapes(config), ckpt.params, path, "a caption model")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.caption", description=__doc__.split("\n\n")[0])
  p.add_argument("images", nargs="+")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--tokenizer")
  p.add_argument("--prompt", default="a picture of ")
  p.add_argument("--beams", type=int, default=3)
  p.add_argument("--max-length", type=int, default=20, help="counts [DEC] and the prompt (official)")
  p.add_argument("--min-length", type=int, default=5)
  p.add_argument("--repetition-penalty", type=float, default=1.0)
  p.add_argument("--sample", action="store_true", help="nucleus sampling instead of beam search")
  p.add_argument("--top-p", type=float, default=0.9)
  p.add_argument("--top-k", type=int, default=50)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--num-samples", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch", type=int, default=16)
  a = p.parse_args(argv)
  from blip_jax.generate.search import generate
  from blip_jax.models import Blip

  config, params = load_caption_model(a.checkpoint)
  tok = find_tokenizer(a.checkpoint, a.tokenizer)
  if tok.vocab_size != config.text.vocab_size:
    print(f"error: tokenizer has {tok.vocab_size} tokens, the checkpoint {config.text.vocab_size}", file=sys.stderr)
    return 2
  prompt = jnp.asarray(tok.tokenize_ids(a.prompt), jnp.int32) if a.prompt else jnp.zeros((0,), jnp.int32)
  if 1 + len(prompt) >= a.max_length:
    print(f"error: --max-length {a.max_length} leaves no room after [DEC] + the {len(prompt)} prompt tokens "
          f"of {a.prompt!r}", file=sys.stderr)
    return 2
  if a.sample:
    method = "sample"
    opts = dict(max_length=a.max_length, min_length=a.min_length, top_p=a.top_p, top_k=a.top_k,
                temperature=a.temperature, num_samples=a.num_samples, repetition_penalty_=a.repetition_penalty)
  else:
    method = "beam" if a.beams > 1 else "greedy"
    opts = dict(max_length=a.max_length, min_length=a.min_length, repetition_penalty_=a.repetition_penalty)
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
    chunk = np.stack(arrays[start:start + a.batch])
    n = len(chunk)
    if n < a.batch and len(arrays) > a.batch:  # keep one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], a.batch - n, 0)])
    img = encode(params, jnp.asarray(chunk))
    ids, lengths = generate(params, config.text, img, prompt, jax.random.fold_in(rng, start), method=method,
                            options=tuple(sorted(opts.items())))
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    per = a.num_samples if a.sample else 1
    for r in range(n * per):
      text = tok.decode(ids[r, 1 + len(prompt): lengths[r]])
      print(f"{paths[start + r // per]}\t{text.strip()}")
  return status


if __name__ == "__main__":
  sys.exit(main())

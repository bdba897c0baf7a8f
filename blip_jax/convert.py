"""Convert BLIP checkpoints between Salesforce (.pth), Hugging Face (directory) and blip_jax (orbax).

  python -m blip_jax.convert SRC DST --task caption [--src-format ...] [--dst-format ...]
      [--image-size 384] [--config model.json] [--ignore momentum ...] [--param-count]

Formats are inferred when not given: a directory with model.json is blip_jax, one with config.json
(or a .safetensors file) is Hugging Face, a .pth/.pt/.bin file is Salesforce. For DST: a path ending
in .pth is Salesforce, otherwise a directory of --dst-format (default blip_jax).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from blip_jax.interop import hf, native, salesforce
from blip_jax.interop.checkpoint import Checkpoint, CheckpointError
from blip_jax.interop.state_dict import IGNORABLE, with_image_size
from blip_jax.models import param_count
from blip_jax.models.config import BlipConfig, TASKS

FORMATS = ("salesforce", "hf", "blip_jax")


def infer_src_format(path: str) -> str:
  if os.path.isdir(path):
    if native.is_native(path):
      return "blip_jax"
    if os.path.exists(os.path.join(path, "config.json")):
      return "hf"
  elif path.endswith(".safetensors"):
    return "hf"
  elif path.endswith((".pth", ".pt", ".bin")):
    return "salesforce"
  raise SystemExit(f"{path}: cannot tell the format; pass --src-format {{{','.join(FORMATS)}}}")


def infer_dst_format(path: str) -> str:
  return "salesforce" if path.endswith((".pth", ".pt")) else "blip_jax"


def load(src: str, fmt: str, task: str | None, config: BlipConfig | None, ignore) -> Checkpoint:
  if fmt == "blip_jax":
    ckpt = native.load_native(src)
    if task and task != ckpt.config.task:
      raise CheckpointError(src, f"is a {ckpt.config.task!r} checkpoint, not {task!r}")
    return ckpt
  if fmt == "hf":
    return hf.load_hf(src, task, config, ignore)
  if task is None:
    raise SystemExit("--task is required for a Salesforce checkpoint")
  return salesforce.load_salesforce(src, task, config, ignore)


def save(ckpt: Checkpoint, dst: str, fmt: str) -> None:
  {"blip_jax": native.save_native, "hf": hf.save_hf, "salesforce": salesforce.save_salesforce}[fmt](ckpt, dst)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.convert", description=__doc__.split("\n\n")[0])
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--task", choices=sorted(TASKS), help="model type (required for Salesforce sources)")
  p.add_argument("--src-format", choices=FORMATS)
  p.add_argument("--dst-format", choices=FORMATS)
  p.add_argument("--config", help="JSON file of a BlipConfig (sizes are otherwise read off the shapes, "
                 "heads = width / 64)")
  p.add_argument("--image-size", type=int, help="resize pos_embed to this image size (PyTorch bicubic)")
  p.add_argument("--ignore", nargs="*", default=[],
                 help="skip these groups or key prefixes on import: " +
                 "; ".join(f"{k}: {v}" for k, v in IGNORABLE.items()))
  p.add_argument("--param-count", action="store_true", help="print the parameter-count report")
  args = p.parse_args(argv)

  src_fmt = args.src_format or infer_src_format(args.src)
  dst_fmt = args.dst_format or infer_dst_format(args.dst)
  config = None
  if args.config:
    with open(args.config) as f:
      d = json.load(f)
    config = BlipConfig.from_dict(d.get("config", d))
  try:
    ckpt = load(args.src, src_fmt, args.task, config, args.ignore)
    if args.image_size and args.image_size != ckpt.config.vision.image_size:
      ckpt = with_image_size(ckpt, args.image_size)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for note in ckpt.notes:
    print(f"note: {note}")
  if args.param_count:
    print(param_count.report(ckpt.params, ckpt.momentum_params))
  save(ckpt, args.dst, dst_fmt)
  print(f"wrote {dst_fmt} {ckpt.config.task!r} checkpoint to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

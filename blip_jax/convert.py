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
import sys

from blip_jax import interop
from blip_jax.interop.checkpoint import CheckpointError
from blip_jax.interop.state_dict import IGNORABLE
from blip_jax.models import param_count
from blip_jax.models.config import TASKS, BlipConfig


def dst_format(path: str) -> str:
  """A .pth/.pt destination is Salesforce; anything else a blip_jax directory."""
  return "salesforce" if path.endswith((".pth", ".pt")) else "blip_jax"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.convert", description=__doc__.split("\n\n")[0])
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument(
    "--task",
    choices=sorted(TASKS),
    help="the model to write; a larger checkpoint (pretrain) "
    "narrows to it, e.g. --task caption for a Hugging Face export (default: the source's own)",
  )
  p.add_argument("--src-format", choices=interop.FORMATS)
  p.add_argument("--dst-format", choices=interop.FORMATS)
  p.add_argument(
    "--config", help="JSON file of a BlipConfig (sizes are otherwise read off the shapes, heads = width / 64)"
  )
  p.add_argument("--image-size", type=int, help="resize pos_embed to this image size (PyTorch bicubic)")
  p.add_argument(
    "--ignore",
    nargs="*",
    default=[],
    help="skip these groups or key prefixes on import: " + "; ".join(f"{k}: {v}" for k, v in IGNORABLE.items()),
  )
  p.add_argument("--param-count", action="store_true", help="print the parameter-count report")
  args = p.parse_args(argv)

  dst_fmt = args.dst_format or dst_format(args.dst)
  try:
    config = None
    if args.config:
      config = _read_config(args.config)
    ckpt = interop.load(args.src, args.task, args.image_size, fmt=args.src_format, config=config, ignore=args.ignore)
    for note in ckpt.notes:
      print(f"note: {note}")
    if args.param_count:
      print(param_count.report(ckpt.params, ckpt.momentum_params))
    interop.save(ckpt, args.dst, dst_fmt, interop.tokenizer_file(args.src) if dst_fmt == "blip_jax" else None)
  except (CheckpointError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {dst_fmt} {ckpt.config.task!r} checkpoint to {args.dst}")
  return 0


def _read_config(path: str) -> BlipConfig:
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(path, f"malformed json at line {e.lineno}: {e.msg}") from None
  return BlipConfig.from_dict(d.get("config", d))


def run():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()

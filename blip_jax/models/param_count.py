"""Parameter counts by component (trainable parameters: momentum copies and queues excluded)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def report(params: dict[str, Any], momentum_params: dict[str, Any] | None = None) -> str:
  """A table: each top-level component and its sub-blocks, then the trainable total."""
  rows = []
  for name in sorted(params):
    sub = params[name]
    rows.append((name, count(sub)))
    if name in ("text", "answer_decoder"):
      groups = {
        "embeddings": 0,
        "encoder self-attention": 0,
        "decoder self-attention": 0,
        "cross-attention": 0,
        "decoder cross-attention": 0,
        "FFN": 0,
        "decoder FFN": 0,
        "decoder embeddings": 0,
        "LM head": 0,
      }
      for k, v in sub.items():
        if k in ("embeddings", "decoder_embeddings"):
          groups[k.replace("_", " ")] += count(v)
        elif k == "cls":
          groups["LM head"] += count(v)
        else:
          for block, leaf in v.items():
            key = {
              "attention": "encoder self-attention",
              "decoder_attention": "decoder self-attention",
              "crossattention": "cross-attention",
              "decoder_crossattention": "decoder cross-attention",
            }.get(block, "decoder FFN" if block.startswith("decoder_") else "FFN")
            groups[key] += count(leaf)
      rows += [(f"  {g}", n) for g, n in groups.items() if n]
  total = count(params)
  lines = [f"{name:<28s}{n:>15,d}" for name, n in rows]
  lines.append(f"{'trainable total':<28s}{total:>15,d}")
  if momentum_params is not None:
    lines.append(f"{'momentum copies (EMA)':<28s}{count(momentum_params):>15,d}")
    lines.append(f"{'total incl. momentum':<28s}{total + count(momentum_params):>15,d}")
  return "\n".join(lines)


def main(argv=None) -> None:
  """`python -m blip_jax.models.param_count [--task T] [--vision vit_b|vit_l] [--image-size N]`."""
  import argparse

  from blip_jax.models.blip import param_shapes
  from blip_jax.models.config import SHARING, TASKS, BlipConfig, TextConfig, vit_b16, vit_l16
  from blip_jax.models.momentum import momentum_view

  p = argparse.ArgumentParser(
    prog="python -m blip_jax.models.param_count",
    description="Parameter counts of a BLIP model (no weights are allocated).",
  )
  p.add_argument("--task", default="pretrain", choices=sorted(TASKS))
  p.add_argument("--vision", default="vit_b", choices=["vit_b", "vit_l"])
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--share", default="all_but_sa", choices=SHARING, help="encoder / decoder sharing (Table 3)")
  args = p.parse_args(argv)
  vision = (vit_b16 if args.vision == "vit_b" else vit_l16)(args.image_size)
  config = BlipConfig(task=args.task, vision=vision, text=TextConfig(share=args.share))
  shapes = param_shapes(config)
  momentum = momentum_view(shapes) if "momentum" in config.components else None
  print(f"BLIP {args.task}, {args.vision}/16 @ {args.image_size}px + BERT-base MED")
  print(report(shapes, momentum))


if __name__ == "__main__":
  main()

"""How well texts match an image: ITM match probability and ITC cosine.

  python -m blip_jax.score --checkpoint CKPT IMAGE "text one" "text two" ... [--itm-first-token cls|enc]
      [--dtype bfloat16]

Prints `itm_probability<TAB>itc_cosine<TAB>text` per text (the cosine where the model has the ITC
projections). The ITM pass starts with [CLS] for task "itm" (the official demo model, HF's
BlipForImageTextRetrieval) and [ENC] otherwise (BLIP's training and retrieval evaluation).
"""

from __future__ import annotations

import argparse
import sys

from blip_jax.cli import load_model, model_arguments, run


def _main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m blip_jax.score", description=__doc__.split("\n\n")[0])
  p.add_argument("image")
  p.add_argument("texts", nargs="+")
  p.add_argument("--itm-first-token", choices=("cls", "enc"))
  model_arguments(p)
  a = p.parse_args(argv)
  model = load_model(a, itm_first_token=a.itm_first_token)
  probs = model.itm([a.image], a.texts)[0]
  cosines = (
    model.similarity([a.image], a.texts)[0] if "proj" in model.config.components else [float("nan")] * len(probs)
  )
  for text, prob, cos in zip(a.texts, probs, cosines):
    print(f"{prob:.4f}\t{cos:.4f}\t{text}")
  return 0


def main(argv=None) -> int:
  """The CLI: exit status 0, or 1 with one error line for bad input (see blip_jax.cli.run)."""
  return run(_main, argv)


def cli():
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  cli()

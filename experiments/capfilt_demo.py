"""The whole BLIP bootstrap in miniature, one command (reference s.8, paper Table 1):

  python -m experiments.capfilt_demo --workdir /tmp/capfilt_demo

on the synthetic world: 4,096 "web" scenes whose captions are 40% wrong, 1,024 clean "human-annotated"
scenes, 256 held-out scenes.
  1. pretrain model A on web + human (the demo's size and schedule);
  2. fine-tune A on the human set twice: a captioner (LM) and a filter (ITC + ITM);
  3. CapFilt the web set (nucleus captions, ITM filter at 0.5), human pairs untouched;
  4. pretrain model B from scratch on human + the bootstrapped set, same steps and seed;
  5. evaluate both the same way: zero-shot retrieval on the held-out scenes, and captioning CIDEr after
     the same short caption fine-tune on the human set.
Every stage writes under --workdir and is skipped when its output exists, so a rerun continues.
Prints the filter's precision / recall against the world's ground truth and the A vs B table.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments import caption_coco_base, demo, retrieval_coco_base

NUM_WEB, NUM_HUMAN, NUM_HELD_OUT, SIZE = 4096, 1024, 256, demo.SIZE
# mixture weights = sizes: every pair is seen about equally often, as the official concatenated sets
WEB = dict(type="synthetic", num=NUM_WEB, image_size=SIZE, noise=0.4, weight=NUM_WEB)
HUMAN = dict(type="synthetic", num=NUM_HUMAN, offset=NUM_WEB, image_size=SIZE, human=True, weight=NUM_HUMAN)
HELD_OUT = dict(type="synthetic", num=NUM_HELD_OUT, offset=NUM_WEB + NUM_HUMAN, image_size=SIZE, captions=5)


def pretrain_config(sources, steps: int):
  c = demo.get_config()
  c.data.sources = tuple(sources)
  c.total_steps = steps
  c.eval.sources = (dict(HELD_OUT, captions=1),)
  return c


def finetune_config(module, init_from: str):
  c = module.get_config("cpu")
  c.init_from = init_from
  c.data.sources = (dict(HUMAN, captions=1, weight=1),)
  c.num_examples = NUM_HUMAN
  c.eval.sources = (HELD_OUT,)
  return c


def _train(cfg, workdir: str) -> dict:
  from blip_jax.train.trainer import train

  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  result = train(cfg, workdir)
  with open(done, "w") as f:
    json.dump(result, f)
  return result


def run(workdir: str, steps: int = 768) -> dict:
  from blip_jax import capfilt
  from blip_jax.inference import load

  w = lambda name: os.path.join(workdir, name)
  a = _train(pretrain_config([WEB, HUMAN], steps), w("A_pretrain"))
  cap_a = _train(finetune_config(caption_coco_base, w("A_pretrain/model")), w("A_captioner"))
  _train(finetune_config(retrieval_coco_base, w("A_pretrain/model")), w("A_filter"))
  if not os.path.exists(w("capfilt/summary.json")):
    job = capfilt.CapFilt(
      load(w("A_captioner/best"), "caption"),
      load(w("A_filter/best"), itm_first_token="enc"),
      method="nucleus",
      prompt="a picture of ",
      max_length=30,
      min_length=16,
    )
    capfilt.run(pretrain_config([WEB], steps), job, w("capfilt"), shard_size=1024)
  with open(w("capfilt/summary.json")) as f:
    summary = json.load(f)
  kept = summary["origins"]["web"]["kept"] + summary["origins"]["synthetic"]["kept"]
  boot = dict(type="json", ann=capfilt.shards(w("capfilt")), image_root="", weight=kept)
  b = _train(pretrain_config([HUMAN, boot], steps), w("B_pretrain"))
  cap_b = _train(finetune_config(caption_coco_base, w("B_pretrain/model")), w("B_captioner"))
  table = {
    name: {
      "zero_shot_i2t_r1": pre["eval"]["i2t_r1"],
      "zero_shot_t2i_r1": pre["eval"]["t2i_r1"],
      "caption_CIDEr": cap["eval"]["CIDEr"],
    }
    for name, pre, cap in (("A (noisy web + human)", a, cap_a), ("B (human + CapFilt)", b, cap_b))
  }
  return {"capfilt": summary, "table": table}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.capfilt_demo", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=768, help="pretraining steps of A and of B")
  a = p.parse_args(argv)
  result = run(a.workdir, a.steps)
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

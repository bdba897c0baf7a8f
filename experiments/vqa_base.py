"""VQA v2 fine-tuning, ViT-B/16 at 480 px: paper Table 8, the official configs/vqa.yaml (reference s.7):
train = VQA train + val + Visual Genome QA (VG answers weighted 0.2), 10 epochs, lr 2e-5, `rank`
inference over the 3,128-answer list (k 128).

  python -m blip_jax.train --config experiments/vqa_base.py --workdir DIR --config.init_from=/ckpt/model_base.pth
  python -m blip_jax.evaluate --config experiments/vqa_base.py --checkpoint DIR/best --out DIR/test \
      --config.eval.sources='({"type": "json", "ann": ["/data/blip/vqa_test.json"], "image_root": "/data/blip/coco"},)'
  (test-dev has no answers: the run writes DIR/test/vqa_result_step_final.json for the server)
  variants: `:cpu` fine-tunes the demo's model on the synthetic world's questions (run experiments/demo.py
  first); `:smoke` is a tiny few-step run for tests.
"""

import ml_collections

from experiments import common, finetune_cpu

ROOT = "/data/blip"
TRAIN = [
  dict(type="json", ann=[f"{ROOT}/vqa_train.json", f"{ROOT}/vqa_val.json"], image_root=f"{ROOT}/coco"),
  dict(type="json", ann=[f"{ROOT}/vg_qa.json"], image_root=f"{ROOT}/vg"),
]
# the official code evaluates on the test-dev server only; a held-out slice of val with answers gives
# the in-loop figure (point it at your split)
EVAL = [dict(type="json", ann=[f"{ROOT}/vqa_val_heldout.json"], image_root=f"{ROOT}/coco")]
ANSWER_LIST = f"{ROOT}/answer_list.json"


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      task="vqa",
      vision="vit_b16",
      image_size=480,
      drop_path_rate=0.1,
      dtype="float32",
      vision_remat="none",
      vision_remat_blocks=0,
      text_remat="none",
    )
  )
  c.objective = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.text_length = 35  # the official question truncation
  common.finetune(
    c,
    train=TRAIN,
    eval_sources=EVAL,
    vocab=f"{ROOT}/bert-base-uncased-vocab.txt",
    init_from=f"{ROOT}/model_base.pth",
    epochs=10,
    num_examples=1_440_000,  # VQA train + val + VG QA questions
    eval_batch=64,
    eval_every=5625,  # once per epoch
  )
  c.optimizer.peak_lr = 2e-5
  c.eval.update(inference="rank", k_test=128, answer_list=ANSWER_LIST, answer_length=8)
  if arg == "cpu":
    finetune_cpu.apply(c, "vqa")
    c.data.sources = (dict(type="synthetic", num=4096, image_size=64),)
    c.eval.sources = (dict(type="synthetic", num=256, offset=4096, image_size=64),)
    c.epochs = 4
    c.optimizer.peak_lr = 2e-4
    c.eval.answer_list, c.eval.every = "", 128
  elif arg:
    finetune_cpu.apply(c, "vqa", arg)
    c.data.sources = (dict(type="synthetic", num=64, image_size=32),)
    c.eval.sources = (dict(type="synthetic", num=16, offset=64, image_size=32),)
    c.eval.answer_list = ""
  return c

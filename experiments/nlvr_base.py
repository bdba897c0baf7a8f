"""NLVR2 fine-tuning, ViT-B/16 at 384 px: paper Table 9, the official configs/nlvr.yaml (reference
s.7): 15 epochs, lr 3e-5, both images through the ViT, two cross-attention branches started from the
pretrained one, left/right swap augmentation; accuracy picks the best model.

  python -m blip_jax.train --config experiments/nlvr_base.py --workdir DIR --config.init_from=/ckpt/model_base.pth
  variants: `:cpu` fine-tunes the demo's model on the synthetic world's statements (run
  experiments/demo.py first); `:smoke` is a tiny few-step run for tests.
"""

import ml_collections

from experiments import common, finetune_cpu

ROOT = "/data/blip"
TRAIN = [dict(type="json", ann=[f"{ROOT}/nlvr_train.json"], image_root=f"{ROOT}/NLVR2")]
EVAL = [dict(type="json", ann=[f"{ROOT}/nlvr_dev.json"], image_root=f"{ROOT}/NLVR2")]


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      task="nlvr",
      vision="vit_b16",
      image_size=384,
      drop_path_rate=0.1,
      dtype="float32",
      vision_remat="none",
      vision_remat_blocks=0,
      text_remat="none",
    )
  )
  c.objective = ml_collections.ConfigDict(dict())
  c.text_length = 40
  common.finetune(
    c,
    train=TRAIN,
    eval_sources=EVAL,
    vocab=f"{ROOT}/bert-base-uncased-vocab.txt",
    init_from=f"{ROOT}/model_base.pth",
    epochs=15,
    num_examples=86_373,  # NLVR2 train statements
    eval_batch=64,
    eval_every=337,  # once per epoch
  )
  c.optimizer.peak_lr = 3e-5
  if arg == "cpu":
    finetune_cpu.apply(c, "nlvr")
    c.data.sources = (dict(type="synthetic", num=4096, image_size=64),)
    c.eval.sources = (dict(type="synthetic", num=256, offset=4096, image_size=64),)
    c.text_length = 16
    c.epochs = 5
    c.optimizer.peak_lr = 2e-4
    c.eval.every = 128
  elif arg:
    finetune_cpu.apply(c, "nlvr", arg)
    c.data.sources = (dict(type="synthetic", num=64, image_size=32),)
    c.eval.sources = (dict(type="synthetic", num=16, offset=64, image_size=32),)
  return c

"""BLIP pretraining, ViT-B/16, 14M images (paper section 4 / reference section 5).

  python -m blip_jax.train --config experiments/pretrain_base_14m.py --workdir DIR \
      --config.data.sources='[...]'  (or edit DATA below to point at your copies)
  python -m blip_jax.aot --config experiments/pretrain_base_14m.py --topology v5p:4x4x4
  variants: `:cpu` shrinks everything (model, batch, queue) and trains on the synthetic world.
"""

import ml_collections

from experiments import common

# The paper's 14M mixture as BLIP json files (download_coco / VG / CC / SBU annotation jsons from the
# official repo); weights are proportional to corpus size, so each epoch sees each corpus about once.
# Any entry may instead be a TFDS source: dict(type="tfds", name="coco_captions", split="train", weight=...).
ROOT = "/data/blip"
DATA = [
  dict(type="json", ann=[f"{ROOT}/coco_karpathy_train.json"], image_root=f"{ROOT}/coco", weight=0.57),
  dict(type="json", ann=[f"{ROOT}/vg_caption.json"], image_root=f"{ROOT}/vg", weight=0.77),
  dict(type="json", ann=[f"{ROOT}/cc3m.json"], image_root=f"{ROOT}/cc3m", weight=2.9),
  dict(type="json", ann=[f"{ROOT}/cc12m.json"], image_root=f"{ROOT}/cc12m", weight=10.0),
  dict(type="json", ann=[f"{ROOT}/sbu.json"], image_root=f"{ROOT}/sbu", weight=0.86),
]
EVAL = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_val_pairs.json"], image_root=f"{ROOT}/coco")]
BERT_VOCAB = f"{ROOT}/bert-base-uncased-vocab.txt"


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      task="pretrain",
      vision="vit_b16",
      image_size=224,
      drop_path_rate=0.0,
      dtype="float32",
      vision_remat="none",
      text_remat="none",
      share="all_but_sa",  # encoder / decoder sharing, paper Table 3: all_but_sa | all | all_but_ca | none
    )
  )
  c.objective = ml_collections.ConfigDict(
    dict(queue_size=57600, momentum=0.995, alpha=0.4, alpha_ramp_epochs=2.0, label_smoothing=0.1, negatives="local")
  )  # "local": hard negatives within each data shard, like the official per-GPU code
  c.objective.distinct_text_negatives = (
    False  # True: never an ITM negative with the positive's exact text (not in the paper)
  )
  c.objective.shuffled_text_negatives = False  # True: + B word-order ITM negatives (NegCLIP; not in the paper)
  c.global_batch = 2880
  c.text_length = 30
  c.num_examples = 14_000_000  # per epoch: COCO + VG + SBU + CC3M + CC12M
  c.epochs = 20
  c.accum_steps = 1
  c.optimizer = ml_collections.ConfigDict(
    dict(
      schedule="pretrain",
      peak_lr=3e-4,
      warmup_steps=3000,
      warmup_lr=1e-6,
      decay_rate=0.9,
      min_lr=1e-6,
      weight_decay=0.05,
      decay_mode="all",
      clip_norm=0.0,
    )
  )
  c.mesh = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
  c.sharding_rules = common.SHARDING_RULES  # logical axis -> mesh axes (flax lm1b style)
  c.data = common.data(DATA, dict(type="wordpiece", vocab=BERT_VOCAB), scale=(0.2, 1.0))
  common.run(c, log_every=50, checkpoint_every=2000, eval_every=5000, eval_sources=EVAL, eval_num=5000, eval_batch=256)
  # the paper's starting points: ImageNet DeiT-B (the official ViT-B init) and bert-base-uncased (an HF
  # directory); see blip_jax/interop/towers.py. "" starts from scratch.
  c.init_from = f"vision={ROOT}/deit_base_patch16_224-b5f2ef4d.pth;text={ROOT}/bert-base-uncased"
  if arg == "cpu":
    c.init_from = ""
    c.model.vision = "tiny"
    c.model.image_size = 32
    c.objective.queue_size = 64
    c.global_batch = 16
    c.num_examples = 1024
    c.optimizer.warmup_steps = 10
    c.data = common.data(
      (dict(type="synthetic", num=1024, image_size=48),), dict(type="synthetic", vocab_size=100), scale=(0.5, 1.0)
    )
    c.data.flip = False  # synthetic captions say left / right
    c.eval.sources = (dict(type="synthetic", num=128, offset=1024, image_size=48),)
    c.eval.num, c.eval.batch, c.eval.every = 128, 32, 0
    c.log_every, c.checkpoint_every = 10, 50
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: use '' or 'cpu'")
  return c

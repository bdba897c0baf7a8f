"""Image-text retrieval fine-tuning on COCO (Karpathy split), ViT-B/16 at 384 px: paper Table 5,
the official configs/retrieval_coco.yaml (reference s.7).

  python -m blip_jax.train --config experiments/retrieval_coco_base.py --workdir DIR \
      --config.init_from=/ckpt/model_base.pth
  python -m blip_jax.evaluate --config experiments/retrieval_coco_base.py --checkpoint DIR/best
  variants: `:cpu` fine-tunes the demo's model on the synthetic world (run experiments/demo.py first);
  `:smoke` is a tiny few-step run for tests.

The model selected is the one with the best r_mean on Karpathy val (DIR/best); evaluate it on test
with --config.eval.sources (EVAL_TEST below).
"""

import ml_collections

from experiments import common, finetune_cpu

ROOT = "/data/blip"
TRAIN = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_train.json"], image_root=f"{ROOT}/coco")]
EVAL = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_val.json"], image_root=f"{ROOT}/coco")]
EVAL_TEST = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_test.json"], image_root=f"{ROOT}/coco")]
BERT_VOCAB = f"{ROOT}/bert-base-uncased-vocab.txt"
INIT = f"{ROOT}/model_base.pth"  # BLIP pretrained (14M), from the official repo


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      task="retrieval",
      vision="vit_b16",
      image_size=384,
      drop_path_rate=0.0,
      dtype="float32",
      vision_remat="full",  # official vit_grad_ckpt with vit_ckpt_layer 4: the last 4 blocks
      vision_remat_blocks=4,
      text_remat="none",
      share="all_but_sa",  # must equal the pretrained model's (paper Table 3 settings: models/config.py)
    )
  )
  c.objective = ml_collections.ConfigDict(
    dict(queue_size=57600, momentum=0.995, alpha=0.4, alpha_ramp_epochs=1.0, label_smoothing=0.0, negatives="global")
  )  # "global": COCO's negative_all_rank, hard negatives over the whole batch
  c.objective.distinct_text_negatives = (
    False  # True: never an ITM negative with the positive's exact text (not in the paper)
  )
  c.objective.shuffled_text_negatives = False  # True: + B word-order ITM negatives (NegCLIP; not in the paper)
  c.text_length = 35
  common.finetune(
    c,
    train=TRAIN,
    eval_sources=EVAL,
    vocab=BERT_VOCAB,
    init_from=INIT,
    epochs=6,
    num_examples=566_747,  # captions in coco_karpathy_train.json
    eval_batch=256,
    eval_every=2213,  # once per epoch
  )
  c.eval.k_test = 256
  if arg == "cpu":
    finetune_cpu.apply(c, "retrieval")
    c.objective.queue_size = 512
    c.epochs = 4
    c.optimizer.peak_lr = 2e-4
    c.eval.k_test = 32
    c.eval.every = 64
  elif arg:
    finetune_cpu.apply(c, "retrieval", arg)
    c.objective.queue_size = 16
    c.eval.k_test = 4
  return c

"""Image captioning fine-tuning on COCO (Karpathy split), ViT-B/16 at 384 px: paper Table 7, the
official configs/caption_coco.yaml (reference s.7): LM with the prompt "a picture of " masked, label
smoothing 0.1; beam 3, max_length 20, min_length 5 at evaluation; the best model by CIDEr + BLEU-4.

  python -m blip_jax.train --config experiments/caption_coco_base.py --workdir DIR \
      --config.init_from=/ckpt/model_base.pth
  python -m blip_jax.evaluate --config experiments/caption_coco_base.py --checkpoint DIR/best \
      --config.eval.sources='[...coco_karpathy_test.json...]'
  variants: `:cpu` fine-tunes the demo's model on the synthetic world (run experiments/demo.py first);
  `:smoke` is a tiny few-step run for tests.
"""

import ml_collections

from experiments import common, finetune_cpu

ROOT = "/data/blip"
TRAIN = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_train.json"], image_root=f"{ROOT}/coco")]
EVAL = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_val.json"], image_root=f"{ROOT}/coco")]
EVAL_TEST = [dict(type="json", ann=[f"{ROOT}/coco_karpathy_test.json"], image_root=f"{ROOT}/coco")]
BERT_VOCAB = f"{ROOT}/bert-base-uncased-vocab.txt"
INIT = f"{ROOT}/model_base.pth"


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      task="caption",
      vision="vit_b16",
      image_size=384,
      drop_path_rate=0.0,
      dtype="float32",
      vision_remat="none",
      vision_remat_blocks=0,
      text_remat="none",
      share="all_but_sa",  # must equal the pretrained model's (paper Table 3 settings: models/config.py)
    )
  )
  c.objective = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.text_length = 40  # the official decoder truncates at 40 tokens
  common.finetune(
    c,
    train=TRAIN,
    eval_sources=EVAL,
    vocab=BERT_VOCAB,
    init_from=INIT,
    epochs=5,
    num_examples=566_747,  # captions in coco_karpathy_train.json
    eval_batch=64,
    eval_every=2213,  # once per epoch
  )
  c.prompt = "a picture of "
  if arg == "cpu":
    finetune_cpu.apply(c, "caption")
    c.text_length = 32  # the synthetic tokenizer spends 12 tokens on the prompt
    c.epochs = 3
    c.optimizer.peak_lr = 2e-4
    c.eval.max_length, c.eval.min_length = 30, 16  # [DEC] + 12 prompt tokens + the caption, as 20 / 5 do
    c.eval.every = 64
  elif arg:
    finetune_cpu.apply(c, "caption", arg)
    c.text_length = 24
    c.eval.max_length, c.eval.min_length = 20, 14
  return c

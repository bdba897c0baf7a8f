"""The default experiment: a small BLIP pretrained on the synthetic world (coloured shapes and the
captions that describe them), on a laptop CPU in a few minutes, with zero-shot retrieval and token
accuracy on held-out scenes at the end.

  python -m blip_jax.train --config experiments/demo.py --workdir /tmp/blip_demo
  variants: `:smoke` (a few steps at tiny sizes, for tests).
"""

from experiments import pretrain_base_14m

NUM = 4096  # training scenes; held-out scenes follow them
SIZE = 64


def get_config(arg: str = ""):
  c = pretrain_base_14m.get_config("cpu")
  c.model.vision = "tiny"
  c.model.image_size = SIZE
  c.model.vision_width = 96
  c.model.text_width = 96
  c.global_batch = 64
  c.text_length = 16
  c.num_examples = NUM
  c.epochs = 12
  c.objective.queue_size = 512
  c.optimizer.peak_lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.data.sources = (dict(type="synthetic", num=NUM, image_size=SIZE),)
  # captions name colours and left / right: no colour-changing RandAugment ops, no flips, mild crops
  c.data.randaug, c.data.flip, c.data.scale = False, False, (0.8, 1.0)
  c.data.threads = 2
  c.eval.sources = (dict(type="synthetic", num=256, offset=NUM, image_size=SIZE),)
  c.eval.num, c.eval.batch, c.eval.every = 256, 64, 0
  c.log_every, c.checkpoint_every = 50, 200
  if arg == "smoke":
    c.model.image_size = 32
    c.model.vision_width = c.model.text_width = 32
    c.global_batch = 8
    c.num_examples = 64
    c.epochs = 1
    c.total_steps = 6
    c.objective.queue_size = 16
    c.optimizer.warmup_steps = 2
    c.data.sources = (dict(type="synthetic", num=64, image_size=32),)
    c.eval.sources = (dict(type="synthetic", num=16, offset=64, image_size=32),)
    c.eval.num, c.eval.batch = 16, 8
    c.log_every, c.checkpoint_every = 2, 2
    c.tensorboard = False
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: use '' or 'smoke'")
  return c

"""The `:cpu` variant every fine-tuning config shares: the demo's model (experiments/demo.py) fine-tuned
on the synthetic world, five captions per scene like COCO, evaluated on held-out scenes.

  python -m blip_jax.train --config experiments/demo.py --workdir /tmp/blip_demo      # first, once
  python -m blip_jax.train --config experiments/caption_coco_base.py:cpu --workdir /tmp/blip_caption
"""

from experiments import demo

DEMO_MODEL = "/tmp/blip_demo/model"  # where the README's demo command leaves its model


def apply(c, task: str, variant: str = "cpu"):
  """Turn the paper config `c` into its CPU variant (in place): the demo's architecture and tokenizer,
  its synthetic data with 5 captions per image, short schedules. variant "smoke": the demo's smoke
  sizes and a few steps (tests; init_from the smoke run's model)."""
  if variant not in ("cpu", "smoke"):
    raise ValueError(f"unknown variant {variant!r}: use '', 'cpu' or 'smoke'")
  if variant == "smoke":
    return _smoke(c, task)
  d = demo.get_config()
  c.model = d.model
  c.model.task = task
  c.data = d.data
  c.data.sources = (dict(type="synthetic", num=demo.NUM, image_size=demo.SIZE, captions=5),)
  c.data.scale = (0.8, 1.0)  # as the demo: mild crops, no flips (captions say left / right)
  c.init_from = DEMO_MODEL
  c.global_batch = 64
  c.num_examples = demo.NUM
  c.optimizer.min_lr = 0.0
  c.eval.sources = (dict(type="synthetic", num=256, offset=demo.NUM, image_size=demo.SIZE, captions=5),)
  c.eval.num, c.eval.batch = 256, 64
  c.log_every, c.checkpoint_every = 16, 64
  return c


def _smoke(c, task: str):
  d = demo.get_config("smoke")
  c.model = d.model
  c.model.task = task
  c.data = d.data
  c.data.sources = (dict(type="synthetic", num=64, image_size=32, captions=5),)
  c.init_from = ""
  c.global_batch, c.num_examples, c.epochs, c.total_steps = 8, 64, 1, 6
  c.optimizer.min_lr = 0.0
  c.eval.sources = (dict(type="synthetic", num=16, offset=64, image_size=32, captions=5),)
  c.eval.num, c.eval.batch, c.eval.every = 16, 8, 0
  c.log_every, c.checkpoint_every = 2, 2
  c.tensorboard = False
  return c

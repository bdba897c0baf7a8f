"""BLIP pretraining, ViT-B/16, 14M images (paper section 4 / reference section 5).

  python -m blip_jax.aot --config experiments/pretrain_base_14m.py --topology v5p:4x4x4
  variants: `:cpu` shrinks everything to run on a laptop CPU.
"""
import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      task="pretrain", vision="vit_b16", image_size=224, drop_path_rate=0.0, dtype="float32",
      vision_remat="none", text_remat="none"))
  c.objective = ml_collections.ConfigDict(dict(
      queue_size=57600, momentum=0.995, alpha=0.4, alpha_ramp_epochs=2.0, label_smoothing=0.1,
      negatives="local"))  # "local": hard negatives within each data shard, like the official per-GPU code
  c.global_batch = 2880
  c.text_length = 30
  c.num_examples = 14_000_000  # per epoch: COCO + VG + SBU + CC3M + CC12M
  c.epochs = 20
  c.accum_steps = 1
  c.optimizer = ml_collections.ConfigDict(dict(
      schedule="pretrain", peak_lr=3e-4, warmup_steps=3000, warmup_lr=1e-6, decay_rate=0.9, min_lr=1e-6,
      weight_decay=0.05, decay_mode="all", clip_norm=0.0))
  c.mesh = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
  # logical axis -> mesh axes (flax lm1b style); see blip_jax/models/layers.py for the names
  c.sharding_rules = (
      ("batch", ("data", "fsdp")), ("length", None),
      ("embed", "fsdp"), ("kv_embed", "fsdp"), ("patch", None),
      ("mlp", "tensor"), ("heads", "tensor"), ("qkv", "tensor"), ("vocab", None),
      ("embed_out", "tensor"), ("proj", None), ("classes", None), ("positions", None))
  if arg == "cpu":
    c.model.vision = "tiny"
    c.model.image_size = 32
    c.objective.queue_size = 64
    c.global_batch = 16
    c.num_examples = 1024
    c.optimizer.warmup_steps = 10
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: use '' or 'cpu'")
  return c

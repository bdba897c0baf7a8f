"""BLIP pretraining, ViT-L/16, 129M images (14M + LAION 115M, a fifth of LAION per epoch).

python -m blip_jax.aot --config experiments/pretrain_large_129m.py --topology v5p:4x4x4
variants: `:cpu`.
"""

from experiments import pretrain_base_14m


def get_config(arg: str = ""):
  c = pretrain_base_14m.get_config(arg)
  if arg == "cpu":
    return c
  c.model.vision = "vit_l16"
  c.model.drop_path_rate = 0.1
  c.model.vision_remat = "full"  # the official ViT-L checkpoints 5-12 blocks; we remat all of them
  c.global_batch = 2400
  c.optimizer.peak_lr = 2e-4
  c.num_examples = 14_000_000 + 115_000_000 // 5
  # 2400 = 2^5 * 75: the batch shards over at most 32 data-parallel groups, so a 64-chip slice
  # splits the rest over tensor parallelism
  c.mesh = (32, 1, -1)
  # the official ViT-L init: timm's ImageNet-21k ViT-L/16 (its head is dropped)
  c.init_from = c.init_from.replace("deit_base_patch16_224-b5f2ef4d.pth", "jx_vit_large_patch16_224_in21k-606da67d.pth")
  return c

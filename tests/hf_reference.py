"""Independent PyTorch references for parity tests: random-init transformers BLIP models at a tiny
size with BLIP's settings, built directly from transformers' own config classes (not from our
config.json writer), plus matching inputs."""

import numpy as np
import torch
import transformers

from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig

VOCAB = 30524


def our_config(
  task,
  vision_width=48,
  text_width=32,
  image_size=32,
  patch=8,
  layers=2,
  heads=4,
  vision_layers=2,
  vision_heads=4,
  text_mlp=64,
  vision_mlp=96,
  embed_dim=16,
):
  return BlipConfig(
    task=task,
    vision=VisionConfig(
      image_size=image_size,
      patch_size=patch,
      width=vision_width,
      depth=vision_layers,
      num_heads=vision_heads,
      mlp_dim=vision_mlp,
    ),
    text=TextConfig(
      hidden_size=text_width, num_layers=layers, num_heads=heads, intermediate_size=text_mlp, max_position_embeddings=64
    ),
    embed_dim=embed_dim,
  )


def hf_model(cls_name, c: BlipConfig, label_smoothing=0.1, seed=0):
  """A random transformers model with the same sizes as `c` and BLIP's real settings."""
  torch.manual_seed(seed)
  text = transformers.BlipTextConfig(
    vocab_size=VOCAB,
    hidden_size=c.text.hidden_size,
    encoder_hidden_size=c.vision.width,
    intermediate_size=c.text.intermediate_size,
    num_hidden_layers=c.text.num_layers,
    num_attention_heads=c.text.num_heads,
    max_position_embeddings=c.text.max_position_embeddings,
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    bos_token_id=30522,
    eos_token_id=102,
    pad_token_id=0,
    sep_token_id=102,
    label_smoothing=label_smoothing,
  )
  vision = transformers.BlipVisionConfig(
    hidden_size=c.vision.width,
    intermediate_size=c.vision.mlp_dim,
    num_hidden_layers=c.vision.depth,
    num_attention_heads=c.vision.num_heads,
    image_size=c.vision.image_size,
    patch_size=c.vision.patch_size,
    layer_norm_eps=1e-6,
  )
  cfg = transformers.BlipConfig(
    text_config=text.to_dict(),
    vision_config=vision.to_dict(),
    image_text_hidden_size=c.embed_dim,
    label_smoothing=label_smoothing,
  )
  model = getattr(transformers, cls_name)(cfg).eval()
  # transformers initialises some tensors to constants (LayerNorm 1/0, biases 0, tiny vision init):
  # randomise everything so a swapped or untransposed tensor cannot hide.
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm_scale = "norm" in name.lower() and name.endswith("weight")
      p.copy_(torch.randn_like(p) * (0.1 if is_norm_scale else 0.05) + (1.0 if is_norm_scale else 0.0))
  return model


def state_dict_numpy(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def inputs(c: BlipConfig, batch=3, length=9, seed=0):
  """NHWC images and (ids, mask) with padding; ids start with [CLS] and end with [SEP]."""
  rng = np.random.default_rng(seed)
  s = c.vision.image_size
  images = rng.normal(size=(batch, s, s, 3)).astype(np.float32)
  lengths = np.linspace(length, 3, batch).astype(int)
  ids = np.zeros((batch, length), np.int64)
  mask = np.zeros((batch, length), np.int64)
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(1000, 2000, n)
    ids[b, 0], ids[b, n - 1] = 101, 102
    mask[b, :n] = 1
  return images, ids, mask


def nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

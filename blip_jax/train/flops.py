"""Analytic FLOPs of BLIP's pretraining step as we run it, for TFLOP/s and MFU logging.

Counts matmul FLOPs (2 per multiply-add), which dominate at every real size. Per step:
  momentum forwards (no backward): ViT (B images), unimodal text (B)
  online forwards, each x3 for forward + backward: ViT (B), unimodal text (B), one ITM multimodal
  pass over B positive + 2B negative texts with cross-attention K/V projected 2B times (once per image
  for its own texts, once more per negative image: tasks/pretrain.itm_pair_logits),
  decoder with LM head (B; its K/V projection is counted although XLA may share it with ITM's),
  ITC similarity matrices.
"""

from __future__ import annotations

from blip_jax.models.config import BlipConfig


def vit_forward(cfg: BlipConfig, batch: int) -> float:
  v = cfg.vision
  n, d = v.num_tokens, v.width
  per_layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * v.mlp_dim
  patches = 2 * (n - 1) * (v.patch_size**2 * 3) * d
  return batch * (v.depth * per_layer + patches)


def text_forward(
  cfg: BlipConfig, batch: int, length: int, cross: bool, lm_head: bool, kv_images: int | None = None
) -> float:
  """`batch` texts; cross-attention K/V projected for `kv_images` images (default: one per text)."""
  t, n, dv = cfg.text, cfg.vision.num_tokens, cfg.vision.width
  l, d = length, t.hidden_size
  per_text = 2 * l * d * 3 * d + 2 * 2 * l * l * d + 2 * l * d * d + 2 * 2 * l * d * t.intermediate_size
  per_image = 0
  if cross:
    per_text += 2 * l * d * d + 2 * 2 * l * n * d + 2 * l * d * d
    per_image = 2 * 2 * n * dv * d
  head = (2 * l * d * d + 2 * l * d * t.vocab_size) if lm_head else 0
  images = batch if kv_images is None else kv_images
  return batch * (t.num_layers * per_text + head) + images * t.num_layers * per_image


def pretrain_step_flops(
  cfg: BlipConfig, batch: int, length: int, queue_size: int, shared_itm_kv: bool = True, lm: bool = True
) -> float:
  """FLOPs of one pretraining step on a global batch of `batch` pairs of `length` tokens (lm=False:
  the retrieval fine-tuning step, the same without the decoder).

  shared_itm_kv=False counts the official step instead, whose ITM positive and negative passes
  project cross-attention K/V for every one of their 3B pairs."""
  e = cfg.embed_dim
  proj = 2 * batch * (cfg.vision.width + cfg.text.hidden_size) * e
  momentum = vit_forward(cfg, batch) + text_forward(cfg, batch, length, False, False) + proj
  itc = 2 * 2 * batch * (batch + queue_size) * e
  online = (
    vit_forward(cfg, batch)
    + text_forward(cfg, batch, length, False, False)
    + proj
    + text_forward(
      cfg,
      3 * batch,
      length,
      True,
      False,  # ITM pos + neg
      2 * batch if shared_itm_kv else None,
    )
    + (text_forward(cfg, batch, length, True, True) if lm else 0)  # decoder + LM head
    + 2 * batch * cfg.text.hidden_size * 2
    + itc
  )
  return momentum + 2 * itc + 3 * online


def caption_step_flops(cfg: BlipConfig, batch: int, length: int) -> float:
  """FLOPs of one captioning fine-tuning step: ViT and decoder with LM head, forward + backward."""
  return 3 * (vit_forward(cfg, batch) + text_forward(cfg, batch, length, True, True))

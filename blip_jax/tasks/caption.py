"""Captioning fine-tuning (reference s.7; the official train_caption.py): the image-grounded decoder
trained with LM on "[DEC] prompt caption", the prompt positions masked from the targets, label
smoothing 0.1. No momentum encoder, no queues. The evaluator decodes with beam search and scores BLEU,
ROUGE-L and CIDEr (pycocoevalcap); the best checkpoint is the one with the highest CIDEr + BLEU-4.

state = {"step", "params", "opt_state", "rng"}
batch = {"images" (B, S, S, 3), "ids" (B, L) [CLS] prompt caption [SEP], "mask" (B, L)}
"""

from __future__ import annotations

import jax

from blip_jax.losses import lm_loss
from blip_jax.models.blip import Blip
from blip_jax.tasks import Task, supervised


def make_step(exp):
  """LM loss of "[DEC] prompt caption" with the prompt positions masked, label smoothing."""
  obj = exp.objective

  def loss_fn(model, params, batch, rng):
    r_img, r_txt = jax.random.split(rng)
    apply = lambda method, *a, r: model.apply({"params": params}, *a, train=True, method=method, rngs={"dropout": r})
    img = apply(Blip.encode_image, batch["images"], r=r_img)
    logits = apply(Blip.decode, batch["ids"], batch["mask"], img, r=r_txt)
    loss = lm_loss(logits, batch["ids"], batch["mask"], obj.label_smoothing, obj.prompt_length)
    return loss, {"loss": loss, "loss_lm": loss}

  return supervised.make_step(exp, loss_fn)


def step_flops(exp) -> float:
  from blip_jax.train import flops

  return flops.caption_step_flops(exp.model, exp.cfg.global_batch, exp.cfg.text_length)


TASK = Task(
  name="caption",
  init_state=supervised.init_state,
  make_step=make_step,
  losses=lambda model: ("loss", "loss_lm"),
  step_flops=step_flops,
  evaluator="blip_jax.evaluate.caption:Captioning",
  best_metric="cider_bleu4",  # CIDEr + BLEU-4 on the validation split, as the official selection
  batch_keys=("images", "ids", "mask"),
)

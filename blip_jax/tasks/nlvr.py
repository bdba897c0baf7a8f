"""NLVR2 fine-tuning (reference s.7; the official train_nlvr.py): both images through the ViT, the
statement through the image-grounded encoder with one cross-attention branch per image, the MLP head
on [ENC], cross-entropy; left/right swap augmentation (data.preprocess). Init from a pretraining
checkpoint copies its cross-attention into both branches (interop.load.narrow). The evaluator reports
accuracy, which picks the best checkpoint.

state = {"step", "params", "opt_state", "rng"}
batch = {"images" (B, 2, S, S, 3), "ids" (B, L), "mask" (B, L), "label" (B,) 1 = true}
"""

from __future__ import annotations

import jax.numpy as jnp

from blip_jax.losses import smoothed_cross_entropy
from blip_jax.tasks import Task, supervised


def make_step(exp):
  def loss_fn(model, params, batch, rng):
    out = model.apply(
      {"params": params}, batch["images"], batch["ids"], batch["mask"], train=True, rngs={"dropout": rng}
    )
    logits = out["nlvr_logits"]
    loss = smoothed_cross_entropy(logits, batch["label"], 0.0).mean()
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  return supervised.make_step(exp, loss_fn)


def step_flops(exp) -> float:
  from blip_jax.train import flops

  b, length = exp.cfg.global_batch, exp.cfg.text_length
  text = flops.text_forward(exp.model, b, length, True, False, kv_images=2 * b)
  return 3 * (flops.vit_forward(exp.model, 2 * b) + text)


TASK = Task(
  name="nlvr",
  init_state=supervised.init_state,
  make_step=make_step,
  losses=lambda model: ("loss",),
  step_flops=step_flops,
  evaluator="blip_jax.evaluate.nlvr:Nlvr",
  best_metric="accuracy",
  batch_keys=("images", "ids", "mask", "label"),
)

"""Captioning fine-tuning (reference s.7; the official train_caption.py): the image-grounded decoder
trained with LM on "[DEC] prompt caption", the prompt positions masked from the targets, label
smoothing 0.1. No momentum encoder, no queues. The evaluator decodes with beam search and scores BLEU,
ROUGE-L and CIDEr (pycocoevalcap); the best checkpoint is the one with the highest CIDEr + BLEU-4.

state = {"step", "params", "opt_state", "rng"}
batch = {"images" (B, S, S, 3), "ids" (B, L) [CLS] prompt caption [SEP], "mask" (B, L)}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from blip_jax.losses import lm_loss
from blip_jax.models.blip import Blip, init_params
from blip_jax.tasks import Task


def init_state(exp, rng: jax.Array) -> dict:
  r_params, r_state = jax.random.split(rng)
  params = init_params(exp.model, r_params)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": exp.optimizer.init(params), "rng": r_state}


def make_step(exp):
  """(state, batch) -> (state, metrics). With accum_steps > 1 the batch runs as microbatches one after
  another (lax.scan) and the gradients are averaged; each microbatch's loss is its own token mean."""
  model, obj, tx, accum = Blip(exp.model), exp.objective, exp.optimizer, exp.cfg.accum_steps

  def loss_fn(params, batch, rng):
    r_img, r_txt = jax.random.split(rng)
    img = model.apply(
      {"params": params}, batch["images"], train=True, method=Blip.encode_image, rngs={"dropout": r_img}
    )
    logits = model.apply(
      {"params": params},
      batch["ids"],
      batch["mask"],
      img,
      train=True,
      method=Blip.decode,
      rngs={"dropout": r_txt},
    )
    return lm_loss(logits, batch["ids"], batch["mask"], obj.label_smoothing, obj.prompt_length)

  grad_fn = jax.value_and_grad(loss_fn)

  def step(state, batch):
    rng, r_next = jax.random.split(state["rng"])
    params = state["params"]
    if accum == 1:
      loss, grads = grad_fn(params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

      def body(acc, xs):
        mb, i = xs
        out = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, out), None

      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
      (loss, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(params, updates),
      "opt_state": opt_state,
      "rng": r_next,
    }
    return new_state, {"loss": loss, "loss_lm": loss, "grad_norm": optax.tree.norm(grads)}

  return step


def step_flops(exp) -> float:
  from blip_jax.train import flops

  return flops.caption_step_flops(exp.model, exp.cfg.global_batch, exp.cfg.text_length)


def _evaluator(exp, tokenizer, mesh, out_dir=None):
  from blip_jax.evaluate.caption import Captioning

  return Captioning(exp, tokenizer, mesh, out_dir)


TASK = Task(
  name="caption",
  init_state=init_state,
  make_step=make_step,
  losses=lambda model: ("loss", "loss_lm"),
  step_flops=step_flops,
  make_evaluator=_evaluator,
  best_metric="cider_bleu4",  # CIDEr + BLEU-4 on the validation split, as the official selection
  batch_keys=("images", "ids", "mask"),
)

"""VQA fine-tuning (reference s.7; the official train_vqa.py / models/blip_vqa.py): the question
through the image-grounded encoder ([ENC]), an answer decoder cross-attending to the question's states,
per answer the summed label-smoothed (0.1) LM loss of "[DEC] answer [SEP]", weighted by the answer's
frequency (VQA count / annotators, VG 0.2; data.preprocess), summed and divided by the number of
questions. The evaluator ranks the answer list (or generates) and reports VQA accuracy, which picks
the best checkpoint.

state = {"step", "params", "opt_state", "rng"}
batch = {"images" (B, S, S, 3), "ids" / "mask" (B, Lq) question, "answer_ids" / "answer_mask" (B, A, La),
         "answer_weight" (B, A) (0 for padding answers)}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blip_jax.losses import smoothed_cross_entropy
from blip_jax.models.blip import Blip
from blip_jax.tasks import Task, supervised

LABEL_SMOOTHING = 0.1  # the official BertLMHeadModel's, in training and in rank scoring alike


def answer_losses(model, params, question_states, question_mask, answer_ids, answer_mask, train=False, rng=None):
  """Summed label-smoothed LM loss of each answer (N, La) given its question's states (N, Lq, D): (N,).
  What training weights and what `rank` inference minimises."""
  rngs = {"dropout": rng} if rng is not None else {}
  logits = model.apply(
    {"params": params},
    answer_ids,
    answer_mask,
    question_states,
    question_mask,
    train=train,
    method=Blip.answer_logits,
    rngs=rngs,
  )
  per_token = smoothed_cross_entropy(logits[:, :-1], answer_ids[:, 1:], LABEL_SMOOTHING)
  return (per_token * answer_mask[:, 1:]).sum(-1)


def question_states(model, params, images, ids, mask, train=False, rng=None):
  """(B, Lq, D) states of the image-grounded question encoder."""
  r_img, r_txt = jax.random.split(rng) if rng is not None else (None, None)
  rngs = lambda r: {"dropout": r} if r is not None else {}
  img = model.apply({"params": params}, images, train=train, method=Blip.encode_image, rngs=rngs(r_img))
  return model.apply({"params": params}, ids, mask, img, train=train, method=Blip.encode_multimodal, rngs=rngs(r_txt))


def make_step(exp):
  def loss_fn(model, params, batch, rng):
    r_q, r_a = jax.random.split(rng)
    states = question_states(model, params, batch["images"], batch["ids"], batch["mask"], True, r_q)
    b, a, la = batch["answer_ids"].shape
    rows = jnp.repeat(jnp.arange(b), a)  # each question's states once per answer slot
    losses = answer_losses(
      model,
      params,
      states[rows],
      batch["mask"][rows],
      batch["answer_ids"].reshape(b * a, la),
      batch["answer_mask"].reshape(b * a, la),
      True,
      r_a,
    )
    loss = (batch["answer_weight"].reshape(-1) * losses).sum() / b
    return loss, {"loss": loss}

  return supervised.make_step(exp, loss_fn)


def step_flops(exp) -> float:
  from blip_jax.train import flops

  b, length = exp.cfg.global_batch, exp.cfg.text_length
  question = flops.text_forward(exp.model, b, length, True, False)
  answers = flops.text_forward(exp.model, b * exp.cfg.data.get("max_answers", 4), 8, True, True, kv_images=b)
  return 3 * (flops.vit_forward(exp.model, b) + question + answers)


TASK = Task(
  name="vqa",
  init_state=supervised.init_state,
  make_step=make_step,
  losses=lambda model: ("loss",),
  step_flops=step_flops,
  evaluator="blip_jax.evaluate.vqa:Vqa",
  best_metric="accuracy",
  batch_keys=("images", "ids", "mask", "answer_ids", "answer_mask", "answer_weight"),
)

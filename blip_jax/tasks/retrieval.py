"""Retrieval fine-tuning (reference s.7; the official train_retrieval.py): the pretraining step on the
retrieval model (no decoder, so no LM), with ITC targets multi-positive by image id through the idx
queue, ITM hard negatives drawn from online similarities with same-id pairs masked (over the global
batch for COCO, within each data shard for Flickr: `objective.negatives`), alpha ramped over the first
epoch. The evaluator re-ranks the top `eval.k_test` of the cosine matrix by ITM; the best checkpoint
is the one with the highest r_mean.

state = pretraining's, with queues["idx"] (image ids, -100 until filled)
batch = {"images" (B, S, S, 3), "ids" (B, L), "mask" (B, L), "idx" (B,) image ids}
"""

from __future__ import annotations

from blip_jax.tasks import Task, pretrain

TASK = Task(
  name="retrieval",
  init_state=pretrain.TASK.init_state,
  make_step=pretrain.TASK.make_step,
  losses=pretrain.losses,
  step_flops=pretrain.step_flops,
  evaluator="blip_jax.evaluate.retrieval:Retrieval",
  best_metric="r_mean",
  batch_keys=("images", "ids", "mask", "idx"),
)

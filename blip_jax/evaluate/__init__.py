"""Evaluators, one per file, each reached through its task (blip_jax.tasks):

  zero_shot   pretraining: held-out ITC R@1/5 and next-token accuracy
  retrieval   cosine top-k re-ranked by ITM, TR/IR@1/5/10 and r_mean (sharded ITM scoring)
  caption     beam search over the eval set, BLEU-1..4 / ROUGE-L / CIDEr (coco_metrics), result file

Every evaluator is built as `Evaluator(exp, tokenizer, mesh[, out_dir])` from the config's `eval`
section (eval_set.load) and called as `evaluate(params, step) -> (metrics, samples)`; samples are a
few (image, text) pairs for TensorBoard. Standalone: `python -m blip_jax.evaluate`.
"""

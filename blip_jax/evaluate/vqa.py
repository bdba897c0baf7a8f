"""VQA evaluation as the official train_vqa.py / blip_vqa.py: the question encoded over the image, then
either `rank` (eval.inference, the default): the answer decoder's first-token probabilities pick the
top eval.k_test (128) candidates of the answer list, each rescored by its full label-smoothed answer
loss, the lowest wins; or `generate`: beam search (3 beams, max 10, min 1 tokens) over the answer
decoder. Scored by VQA accuracy (vqa_accuracy) against every annotator's answer, beside the accuracy
of always answering the commonest answer; with an out_dir, `vqa_result_step_<N>.json`
(`[{"question_id", "answer"}]`, the VQAv2 test-dev server format).

The answer list is eval.answer_list (a json list, the official answer_list.json of 3,128 answers), or
when empty every distinct annotated answer of the eval set.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from blip_jax.evaluate import vqa_accuracy
from blip_jax.evaluate.eval_set import load_arrays
from blip_jax.generate.search import generate
from blip_jax.models.blip import Blip
from blip_jax.tasks.vqa import answer_losses, question_states


class Vqa:
  """The VQA evaluator (see the module docstring)."""

  def __init__(self, exp, tokenizer, mesh, out_dir: str | None = None, data: dict | None = None):
    cfg, e = exp.cfg, exp.cfg.eval
    self.data, skipped = (
      (data, 0) if data is not None else load_arrays(cfg, tokenizer, exp.model.vision.image_size, "vqa")
    )
    self.notes = (
      [f"evaluation set: {len(self.data['ids'])} questions ({skipped} unreadable skipped)"] if skipped else []
    )
    self.tokenizer, self.out_dir, self.config = tokenizer, out_dir, exp.model
    self.inference = e.get("inference", "rank")
    if self.inference not in ("rank", "generate"):
      raise ValueError(f"config.eval.inference={self.inference!r}: must be 'rank' or 'generate'")
    self.references = [list(a[:n]) for a, n in zip(self.data["answers"].tolist(), self.data["num_answers"].tolist())]
    self.answer_list = self._answer_list(e.get("answer_list", ""))
    self.candidates = tokenizer.encode(self.answer_list, e.get("answer_length", 8))
    self.k = min(e.get("k_test", 128), len(self.answer_list))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.batch = -(-e.batch // shards) * shards
    self.model = Blip(exp.model)
    self._replicated = NamedSharding(mesh, PartitionSpec())
    self._rank = jax.jit(self.rank, static_argnames="k", out_shardings=self._replicated)
    self._states = jax.jit(
      lambda p, im, i, m: question_states(self.model, p, im, i, m),
      out_shardings=NamedSharding(mesh, PartitionSpec(("data", "fsdp"))),
    )
    self._gather = jax.jit(lambda x: x, out_shardings=self._replicated)

  def _answer_list(self, path: str) -> list[str]:
    if path:
      try:
        with open(path) as f:
          answers = json.load(f)
      except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"config.eval.answer_list={path!r}: {err}") from None
      if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or not answers:
        raise ValueError(f"config.eval.answer_list={path!r}: expected a non-empty json list of answer strings")
      return answers
    counts = collections.Counter(a for refs in self.references for a in refs)
    return [a for a, _ in counts.most_common()]

  def rank(self, params, images, ids, mask, cand_ids, cand_mask, k: int):
    """(B,) index into the answer list of each question's answer (official rank_answer)."""
    states = question_states(self.model, params, images, ids, mask)
    b = ids.shape[0]
    start = jnp.zeros((b, 1), jnp.int32)  # answer_logits writes [DEC] over position 0
    first = self.model.apply({"params": params}, start, jnp.ones_like(start), states, mask, method=Blip.answer_logits)[
      :, 0
    ]
    probs = jax.nn.softmax(first, -1)[:, cand_ids[:, 1]]  # (B, N): each candidate's first token
    _, top = jax.lax.top_k(probs, k)  # (B, k)
    rows = jnp.repeat(jnp.arange(b), k)
    flat = top.reshape(-1)
    losses = answer_losses(self.model, params, states[rows], mask[rows], cand_ids[flat], cand_mask[flat])
    best = jnp.argmin(losses.reshape(b, k), -1)
    return top[jnp.arange(b), best]

  def answers(self, params) -> list[str]:
    """The model's answer to every eval question."""
    out, n = [], len(self.data["ids"])
    cand_ids, cand_mask = (jnp.asarray(a) for a in self.candidates)
    for start in range(0, n, self.batch):
      part = {k: self.data[k][start : start + self.batch] for k in ("images", "ids", "mask")}
      m = len(part["ids"])
      if m < self.batch:
        part = {k: np.concatenate([v, np.repeat(v[-1:], self.batch - m, 0)]) for k, v in part.items()}
      if self.inference == "rank":
        best = jax.device_get(
          self._rank(params, part["images"], part["ids"], part["mask"], cand_ids, cand_mask, k=self.k)
        )
        out += [self.answer_list[i] for i in best[:m]]
      else:
        states = self._states(params, part["images"], part["ids"], part["mask"])
        options = (("max_length", 10), ("min_length", 1), ("num_beams", 3))
        ids, lengths = generate(
          {"text": params["answer_decoder"]},
          self.config.text,
          states,
          jnp.zeros((0,), jnp.int32),
          method="beam",
          options=options,
        )
        ids, lengths = jax.device_get(self._gather((ids, lengths)))
        out += [self.tokenizer.decode(ids[r, 1 : lengths[r]]).strip() for r in range(m)]
    return out

  def evaluate(self, params, step: int | None = None) -> tuple[dict, list]:
    predictions = self.answers(params)
    scored = [(p, refs) for p, refs in zip(predictions, self.references) if refs]  # test-dev has no answers
    metrics = {"questions": float(len(predictions)), "annotated": float(len(scored))}
    if scored:
      counts = collections.Counter(vqa_accuracy.normalize_prediction(a) for _, refs in scored for a in refs)
      commonest = counts.most_common(1)[0][0]
      metrics["accuracy"] = 100.0 * float(np.mean([vqa_accuracy.accuracy(p, refs) for p, refs in scored]))
      metrics["majority_accuracy"] = 100.0 * float(np.mean([vqa_accuracy.accuracy(commonest, r) for _, r in scored]))
    if self.out_dir and jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      path = os.path.join(self.out_dir, f"vqa_result_step_{step if step is not None else 'final'}.json")
      qids = self.data["question_id"].tolist()
      with open(path + ".tmp", "w") as f:
        json.dump([{"question_id": int(q), "answer": a} for q, a in zip(qids, predictions)], f)
      os.replace(path + ".tmp", path)
    return metrics, [(self.data["images"][i], predictions[i]) for i in range(min(4, len(predictions)))]

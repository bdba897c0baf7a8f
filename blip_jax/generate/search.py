"""Greedy, beam search and nucleus sampling as single `lax.while_loop`s over the cached decoder.

Semantics follow transformers' `generate` (4.57), which the official BLIP calls, so token ids match
it (tests/test_generate.py): the sequence starts with [DEC] + prompt; `max_length` and `min_length`
count every token including [DEC] and the prompt; until min_length the [SEP] (eos) logit is -inf;
repetition penalty divides positive / multiplies negative scores of every token already in the
sequence (on logits for greedy and sampling, on log-probabilities for beam search, as HF does);
beam search keeps 2 x num_beams candidates per step, finalises hypotheses that emit [SEP] or reach
max_length with score sum_logprob / generated_length ** length_penalty, and stops when no running
beam can beat the finished ones (HF's early_stopping=False heuristic).

All functions take image tokens (B, Lk, Dv) and return (ids (B, max_length) int32, lengths (B,)):
positions past a sequence's end hold `fill` ([PAD] for greedy/sampling, as HF). With
`with_scores=True` a third output gives each sequence's score: for beam search HF's
`sequences_scores` (sum of log-probabilities / generated length ** length_penalty), where
`num_return` > 1 returns the n best hypotheses per image (rows grouped by image); for greedy and
sampling the log-probability of the generated tokens under the model (its softmax, before the
penalty and the nucleus filter).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from blip_jax.generate import decoder
from blip_jax.models.config import TextConfig

NEG = -1.0e9


def _prefix(cfg: TextConfig, prompt: jax.Array, n: int):
  """[DEC] + prompt for n rows -> (n, P)."""
  prompt = jnp.asarray(prompt, jnp.int32).reshape(-1)
  return jnp.concatenate([jnp.full((n, 1), cfg.bos_token_id, jnp.int32), jnp.tile(prompt[None], (n, 1))], 1)


def _prefill(tp, cfg, seq, prompt_len, cache, cross):
  """Run the decoder over positions 0..P-2 (their logits are not needed) to fill the cache."""
  for t in range(prompt_len - 1):
    _, cache = decoder.step(tp, cfg, seq[:, t], jnp.int32(t), cache, cross)
  return cache


def apply_repetition_penalty(scores, seq, length, penalty: float):
  """HF RepetitionPenaltyLogitsProcessor over the first `length` tokens of seq. scores (N, V)."""
  if penalty == 1.0:
    return scores
  present = jnp.zeros(scores.shape, bool)
  valid = jnp.arange(seq.shape[1])[None, :] < length
  rows = jnp.broadcast_to(jnp.arange(seq.shape[0])[:, None], seq.shape)
  present = present.at[rows, seq].max(valid)
  return jnp.where(present, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def _min_length(scores, cur_len, min_length: int, eos: int):
  return jnp.where((cur_len < min_length) & (jnp.arange(scores.shape[-1]) == eos)[None], -jnp.inf, scores)


def greedy(
  params,
  cfg: TextConfig,
  image_embeds,
  prompt=(),
  *,
  max_length=20,
  min_length=0,
  repetition_penalty: float = 1.0,
  with_scores: bool = False,
):
  """Greedy decoding. See module docstring for the conventions."""
  prompt = jnp.asarray(prompt, jnp.int32)
  out = _sample_loop(params, cfg, image_embeds, prompt, None, max_length, min_length, repetition_penalty, None)
  return out if with_scores else out[:2]


def sample(
  params,
  cfg: TextConfig,
  image_embeds,
  rng,
  prompt=(),
  *,
  num_samples=1,
  max_length=20,
  min_length=0,
  top_p=0.9,
  top_k=50,
  temperature=1.0,
  repetition_penalty: float = 1.0,
  with_scores: bool = False,
):
  """Nucleus sampling: num_samples captions per image -> (B * num_samples, max_length) rows grouped by
  image. The kept set is the smallest top-probability set with mass >= top_p, within the top_k."""
  out = _sample_loop(
    params,
    cfg,
    image_embeds,
    jnp.asarray(prompt, jnp.int32),
    rng,
    max_length,
    min_length,
    repetition_penalty,
    (top_p, top_k, temperature),
    group=num_samples,
  )
  return out if with_scores else out[:2]


def nucleus_filter(logits, top_p: float, top_k: int, temperature: float):
  """HF's temperature -> TopK -> TopP warpers: logits outside the kept set become -inf. (N, V)."""
  logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(logits, axis=-1)  # ascending, like HF
    sorted_logits = jnp.take_along_axis(logits, order, -1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
    remove_sorted = cum <= 1 - top_p
    remove_sorted = remove_sorted.at[:, -1].set(False)  # keep at least one token
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
    logits = jnp.where(remove, -jnp.inf, logits)
  return logits


def _sample_loop(params, cfg, image_embeds, prompt, rng, max_length, min_length, penalty, nucleus, group=1):
  tp = params["text"]
  n = image_embeds.shape[0] * group  # rows grouped by image
  prefix = _prefix(cfg, prompt, n)
  p_len = prefix.shape[1]
  if max_length <= p_len:
    raise ValueError(f"max_length={max_length} leaves no room after the {p_len} prompt tokens")
  seq = jnp.full((n, max_length), cfg.pad_token_id, jnp.int32).at[:, :p_len].set(prefix)
  cross = decoder.cross_kv(tp, cfg, image_embeds)
  cache = _prefill(tp, cfg, seq, p_len, decoder.init_cache(cfg, n, max_length, cross[0][0].dtype), cross)
  eos = cfg.sep_token_id

  def cond(s):
    return (s["len"] < max_length) & ~s["done"].all()

  def body(s):
    cur = s["len"]
    logits, cache = decoder.step(
      tp, cfg, jax.lax.dynamic_index_in_dim(s["seq"], cur - 1, 1, False), cur - 1, s["cache"], cross
    )
    model_logp = jax.nn.log_softmax(logits, -1)
    logits = apply_repetition_penalty(logits, s["seq"], cur, penalty)
    logits = _min_length(logits, cur, min_length, eos)
    if nucleus is None:
      nxt = jnp.argmax(logits, -1).astype(jnp.int32)
    else:
      logits = nucleus_filter(logits, *nucleus)
      nxt = jax.random.categorical(jax.random.fold_in(rng, cur), logits, -1).astype(jnp.int32)
    nxt = jnp.where(s["done"], cfg.pad_token_id, nxt)
    seq = jax.lax.dynamic_update_index_in_dim(s["seq"], nxt, cur, 1)
    lengths = jnp.where(s["done"], s["lengths"], cur + 1)
    step_logp = jnp.take_along_axis(model_logp, nxt[:, None], -1)[:, 0]
    logp = s["logp"] + jnp.where(s["done"], 0.0, step_logp)
    done = s["done"] | (nxt == eos)
    return {"seq": seq, "cache": cache, "len": cur + 1, "done": done, "lengths": lengths, "logp": logp}

  s = jax.lax.while_loop(
    cond,
    body,
    {
      "seq": seq,
      "cache": cache,
      "len": jnp.int32(p_len),
      "done": jnp.zeros((n,), bool),
      "lengths": jnp.full((n,), p_len, jnp.int32),
      "logp": jnp.zeros((n,), jnp.float32),
    },
  )
  return s["seq"], s["lengths"], s["logp"]


def beam_search(
  params,
  cfg: TextConfig,
  image_embeds,
  prompt=(),
  *,
  num_beams=3,
  max_length=20,
  min_length=0,
  length_penalty=1.0,
  repetition_penalty: float = 1.0,
  num_return: int = 1,
  with_scores: bool = False,
):
  """Beam search (HF semantics, early_stopping=False). Returns the best `num_return` (<= num_beams)
  hypotheses per image, rows grouped by image, and with_scores their sequences_scores."""
  tp = params["text"]
  b, k = image_embeds.shape[0], num_beams
  prompt = jnp.asarray(prompt, jnp.int32)
  prefix = _prefix(cfg, prompt, b * k)
  p_len = prefix.shape[1]
  if max_length <= p_len:
    raise ValueError(f"max_length={max_length} leaves no room after the {p_len} prompt tokens")
  eos, vocab = cfg.sep_token_id, cfg.vocab_size
  fill = cfg.pad_token_id or eos  # what HF pre-fills its sequences with
  seq = jnp.full((b * k, max_length), fill, jnp.int32).at[:, :p_len].set(prefix)
  cross = decoder.cross_kv(tp, cfg, image_embeds)  # once per image; beam rows are grouped by image
  cache = _prefill(tp, cfg, seq, p_len, decoder.init_cache(cfg, b * k, max_length, cross[0][0].dtype), cross)
  seq = seq.reshape(b, k, max_length)
  gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
  top_mask = jnp.arange(2 * k) < k

  def cond(s):
    return s["go"]

  def body(s):
    cur = s["len"]
    flat = s["running"].reshape(b * k, max_length)
    logits, cache = decoder.step(
      tp, cfg, jax.lax.dynamic_index_in_dim(flat, cur - 1, 1, False), cur - 1, s["cache"], cross
    )
    logp = jax.nn.log_softmax(logits, -1)
    logp = apply_repetition_penalty(logp, flat, cur, repetition_penalty)
    logp = _min_length(logp, cur, min_length, eos)
    acc = (logp.reshape(b, k, vocab) + s["running_scores"][:, :, None]).reshape(b, k * vocab)
    top_lp, top_idx = jax.lax.top_k(acc, 2 * k)
    top_beam, top_ids = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    top_seq = gather(s["running"], top_beam)
    top_seq = jax.lax.dynamic_update_index_in_dim(top_seq, top_ids, cur, 2)
    hits = (top_ids == eos) | (cur + 1 >= max_length)
    # running beams for the next step: the best k that did not just finish
    run_lp = top_lp + hits * NEG
    nxt = jax.lax.top_k(run_lp, k)[1]
    running, running_scores = gather(top_seq, nxt), gather(run_lp, nxt)
    reorder = (gather(top_beam, nxt) + jnp.arange(b)[:, None] * k).reshape(-1)
    cache = tuple(c[:, reorder] for c in cache)
    # finished hypotheses: merge the newly finished (only from the first k candidates) and keep the best k
    just = hits & top_mask[None]
    fin_lp = top_lp / ((cur + 1 - p_len).astype(jnp.float32) ** length_penalty)
    fin_lp = fin_lp + (~s["unsat"]) * NEG + (~just) * NEG
    merged_seq = jnp.concatenate([s["seqs"], top_seq], 1)
    merged_scores = jnp.concatenate([s["scores"], fin_lp], 1)
    merged_fin = jnp.concatenate([s["finished"], just], 1)
    merged_len = jnp.concatenate([s["lengths"], jnp.full((b, 2 * k), cur + 1, jnp.int32)], 1)
    keep = jax.lax.top_k(merged_scores, k)[1]
    seqs, scores = gather(merged_seq, keep), gather(merged_scores, keep)
    finished, lengths = gather(merged_fin, keep), gather(merged_len, keep)
    cur = cur + 1
    best_possible = running_scores[:, :1] / ((cur - p_len).astype(jnp.float32) ** length_penalty)
    worst = jnp.where(finished, jnp.min(scores, 1, keepdims=True), NEG)
    unsat = s["unsat"] & jnp.any(best_possible > worst, -1, keepdims=True)
    go = jnp.any(unsat) & ~jnp.all(hits)
    return {
      "running": running,
      "running_scores": running_scores,
      "seqs": seqs,
      "scores": scores,
      "finished": finished,
      "lengths": lengths,
      "unsat": unsat,
      "cache": cache,
      "len": cur,
      "go": go,
    }

  init = {
    "running": seq,
    "running_scores": jnp.zeros((b, k)).at[:, 1:].set(NEG),
    "seqs": seq,
    "scores": jnp.full((b, k), NEG),
    "finished": jnp.zeros((b, k), bool),
    "lengths": jnp.full((b, k), p_len, jnp.int32),
    "unsat": jnp.ones((b, 1), bool),
    "cache": cache,
    "len": jnp.int32(p_len),
    "go": jnp.bool_(True),
  }
  if not 1 <= num_return <= k:
    raise ValueError(f"num_return={num_return}: must be in [1, num_beams={k}]")
  s = jax.lax.while_loop(cond, body, init)
  n = num_return  # finished hypotheses are kept sorted by score, best first
  out = (s["seqs"][:, :n].reshape(b * n, max_length), s["lengths"][:, :n].reshape(-1), s["scores"][:, :n].reshape(-1))
  return out if with_scores else out[:2]


@functools.partial(jax.jit, static_argnames=("cfg", "method", "options"))
def generate(params, cfg: TextConfig, image_embeds, prompt, rng=None, *, method: str = "beam", options: tuple = ()):
  """Jitted entry: method "greedy" | "beam" | "sample", options as a tuple of (name, value) pairs."""
  kw = dict(options)
  if method == "greedy":
    return greedy(params, cfg, image_embeds, prompt, **kw)
  if method == "beam":
    return beam_search(params, cfg, image_embeds, prompt, **kw)
  if method == "sample":
    return sample(params, cfg, image_embeds, rng, prompt, **kw)
  raise ValueError(f"method={method!r}: must be 'greedy', 'beam' or 'sample'")

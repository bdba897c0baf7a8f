"""Image-text retrieval metrics exactly as the reference (section 7), in numpy:

1. S = image_emb . text_emb^T (projected, L2-normalised features; no temperature).
2. For each image, the top-k texts by S are re-scored as ITM match logit + S; every other entry is -100.
   Symmetrically for each text over images (k = 256 COCO, 128 Flickr).
3. TR@K: an image counts if the best rank of any of its captions is < K. IR@K: a text counts if its
   image's rank is < K. r_mean averages TR and IR @1/5/10.

`rerank_scores` takes the ITM scorer as a function, so the heavy part runs jitted and sharded on
devices (evaluate/retrieval.py) while the bookkeeping stays plain numpy. `recall_at` is the metric of
the zero-shot ITC evaluation of pretraining (evaluate/zero_shot.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

FILL = -100.0


def rerank_scores(sim: np.ndarray, k: int, itm: Callable[[np.ndarray, np.ndarray], np.ndarray]):
  """(score_i2t (I, T), score_t2i (T, I)) from the cosine matrix sim (I, T).

  itm(image_rows (n,), text_cols (n,)) -> (n,) ITM match logits for those pairs."""
  n_img, n_txt = sim.shape
  k_i, k_t = min(k, n_txt), min(k, n_img)
  i2t = np.full(sim.shape, FILL, np.float32)
  top_t = np.argsort(-sim, axis=1, kind="stable")[:, :k_i]  # (I, k)
  rows = np.repeat(np.arange(n_img), k_i)
  logits = itm(rows, top_t.reshape(-1)).reshape(n_img, k_i)
  i2t[np.arange(n_img)[:, None], top_t] = logits + sim[np.arange(n_img)[:, None], top_t]
  t2i = np.full(sim.T.shape, FILL, np.float32)
  top_i = np.argsort(-sim.T, axis=1, kind="stable")[:, :k_t]  # (T, k)
  cols = np.repeat(np.arange(n_txt), k_t)
  logits = itm(top_i.reshape(-1), cols).reshape(n_txt, k_t)
  t2i[np.arange(n_txt)[:, None], top_i] = logits + sim.T[np.arange(n_txt)[:, None], top_i]
  return i2t, t2i


def retrieval_metrics(
  score_i2t: np.ndarray, score_t2i: np.ndarray, txt2img: np.ndarray, img2txt: list[list[int]]
) -> dict:
  """TR/IR @1/5/10 (percent) and their means, as the official `itm_eval`.

  txt2img: (T,) image of each text; img2txt: for each image, the indices of its texts."""
  ranks = np.zeros(score_i2t.shape[0])
  for i, score in enumerate(score_i2t):
    order = np.argsort(score)[::-1]
    ranks[i] = min(np.where(order == t)[0][0] for t in img2txt[i])
  tr = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
  ranks_t = np.zeros(score_t2i.shape[0])
  for t, score in enumerate(score_t2i):
    order = np.argsort(score)[::-1]
    ranks_t[t] = np.where(order == txt2img[t])[0][0]
  ir = [100.0 * np.mean(ranks_t < k) for k in (1, 5, 10)]
  out = {"txt_r1": tr[0], "txt_r5": tr[1], "txt_r10": tr[2], "img_r1": ir[0], "img_r5": ir[1], "img_r10": ir[2]}
  out["txt_r_mean"], out["img_r_mean"] = float(np.mean(tr)), float(np.mean(ir))
  out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
  out["img_mdR"] = float(np.median(ranks_t + 1))  # median rank of the right image (the video metric's mdR)
  return out


def recall_at(sim: np.ndarray, match: np.ndarray, k: int) -> float:
  """Fraction of query rows of sim (Q, G) whose top-k gallery columns hold at least one match
  (match: (Q, G) bool; several matches per row allowed)."""
  top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  return float(np.take_along_axis(match, top, axis=1).any(1).mean())

"""Retrieval metrics equal a brute-force computation; the re-rank follows the reference (top-k by
cosine, score = ITM match logit + cosine, everything else -100)."""

import numpy as np

from blip_jax.evaluate.retrieval_metrics import FILL, rerank_scores, retrieval_metrics


def brute_force(s_i2t, s_t2i, txt2img, k):
  tr = ir = 0
  for i in range(s_i2t.shape[0]):  # rank of the best of the image's captions = texts scored above it
    best = max(s_i2t[i, t] for t in range(len(txt2img)) if txt2img[t] == i)
    tr += (s_i2t[i] > best).sum() < k
  for t in range(s_t2i.shape[0]):
    ir += (s_t2i[t] > s_t2i[t, txt2img[t]]).sum() < k
  return 100.0 * tr / s_i2t.shape[0], 100.0 * ir / s_t2i.shape[0]


def test_metrics_equal_brute_force_with_five_captions_per_image():
  rng = np.random.default_rng(0)
  n_img = 40
  txt2img = np.repeat(np.arange(n_img), 5)
  img2txt = [list(np.where(txt2img == i)[0]) for i in range(n_img)]
  signal = (txt2img[None, :] == np.arange(n_img)[:, None]) * 1.5  # a noisy but informative score
  s_i2t = rng.normal(size=(n_img, 5 * n_img)) + signal
  s_t2i = rng.normal(size=(5 * n_img, n_img)) + signal.T
  m = retrieval_metrics(s_i2t, s_t2i, txt2img, img2txt)
  for k in (1, 5, 10):
    tr, ir = brute_force(s_i2t, s_t2i, txt2img, k)
    assert np.isclose(m[f"txt_r{k}"], tr) and np.isclose(m[f"img_r{k}"], ir)
  assert 0 < m["txt_r1"] < 100 and 0 < m["img_r1"] < 100
  assert np.isclose(m["r_mean"], np.mean([m[f"{a}_r{k}"] for a in ("txt", "img") for k in (1, 5, 10)]))


def test_rerank_scores_top_k_by_cosine_plus_itm_logit():
  rng = np.random.default_rng(1)
  sim = rng.normal(size=(6, 30)).astype(np.float32)
  table = rng.normal(size=(6, 30)).astype(np.float32)  # the "ITM match logit" of every pair
  calls = []

  def itm(rows, cols):
    calls.append(len(rows))
    return table[rows, cols]

  i2t, t2i = rerank_scores(sim, 4, itm)
  assert calls == [6 * 4, 30 * 4]
  for i in range(6):
    top = set(np.argsort(-sim[i])[:4])
    for t in range(30):
      want = table[i, t] + sim[i, t] if t in top else FILL
      assert np.isclose(i2t[i, t], want)
  for t in range(30):
    top = set(np.argsort(-sim[:, t])[:4])
    for i in range(6):
      assert np.isclose(t2i[t, i], table[i, t] + sim[i, t] if i in top else FILL)

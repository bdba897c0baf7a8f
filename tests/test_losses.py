"""ITC / ITM / LM losses equal a plain-numpy implementation of reference section 5 (float32, 1e-5);
hard negatives never pick a positive and follow their weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.losses import hard_negatives, itc_loss, itm_loss, lm_loss, shuffled_texts
from blip_jax.losses.itm import negative_weights

TOL = 1e-5


# ---- independent numpy references ---------------------------------------------------------------
def np_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=1, keepdims=True)


def np_log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_itc(i, t, i_m, t_m, iq, tq, temp, alpha, idx=None, idx_q=None):
  t_all = np.concatenate([t_m, tq], 0)
  i_all = np.concatenate([i_m, iq], 0)
  b, n = i.shape[0], t_all.shape[0]
  if idx is None:
    hard = np.zeros((b, n))
    hard[np.arange(b), np.arange(b)] = 1
  else:
    pos = (idx[:, None] == np.concatenate([idx, idx_q])[None]).astype(np.float64)
    hard = pos / pos.sum(1, keepdims=True)
  y_i2t = alpha * np_softmax(i_m @ t_all.T / temp) + (1 - alpha) * hard
  y_t2i = alpha * np_softmax(t_m @ i_all.T / temp) + (1 - alpha) * hard
  l_i2t = -(np_log_softmax(i @ t_all.T / temp) * y_i2t).sum(1).mean()
  l_t2i = -(np_log_softmax(t @ i_all.T / temp) * y_t2i).sum(1).mean()
  return (l_i2t + l_t2i) / 2


def normed(rng, *shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def feats():
  rng = np.random.default_rng(0)
  b, q, e = 8, 16, 12
  return dict(
    i=normed(rng, b, e),
    t=normed(rng, b, e),
    i_m=normed(rng, b, e),
    t_m=normed(rng, b, e),
    iq=normed(rng, q, e),
    tq=normed(rng, q, e),
  )


def test_itc_with_queue_and_distillation(feats):
  f = feats
  for alpha in (0.0, 0.4):
    got, _ = itc_loss(*(jnp.asarray(f[k]) for k in ("i", "t", "i_m", "t_m", "iq", "tq")), 0.07, alpha)
    want = np_itc(*(f[k].astype(np.float64) for k in ("i", "t", "i_m", "t_m", "iq", "tq")), 0.07, alpha)
    assert abs(float(got) - want) <= TOL * max(1, abs(want))


def test_itc_multi_positive_by_image_id(feats):
  f = feats
  idx = np.array([3, 3, 5, 7, 7, 7, 9, 11])
  idx_q = np.array([3, 5, 100, -100, 7] + [-100] * 11)
  got, _ = itc_loss(
    *(jnp.asarray(f[k]) for k in ("i", "t", "i_m", "t_m", "iq", "tq")), 0.05, 0.4, jnp.asarray(idx), jnp.asarray(idx_q)
  )
  want = np_itc(*(f[k].astype(np.float64) for k in ("i", "t", "i_m", "t_m", "iq", "tq")), 0.05, 0.4, idx, idx_q)
  assert abs(float(got) - want) <= TOL * max(1, abs(want))


def test_itc_gradient_flows_only_through_online_features(feats):
  f = {k: jnp.asarray(v) for k, v in feats.items()}
  g = jax.grad(lambda i_m, i: itc_loss(i, f["t"], i_m, f["t_m"], f["iq"], f["tq"], 0.07, 0.4)[0], argnums=(0, 1))(
    f["i_m"], f["i"]
  )
  assert float(jnp.abs(g[0]).max()) == 0.0 and float(jnp.abs(g[1]).max()) > 0


def test_itm_cross_entropy():
  rng = np.random.default_rng(1)
  pos, neg = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
  logits = np.concatenate([pos, neg]).astype(np.float64)
  labels = np.array([1] * 4 + [0] * 8)
  want = -np_log_softmax(logits)[np.arange(12), labels].mean()
  assert abs(float(itm_loss(jnp.asarray(pos), jnp.asarray(neg))) - want) <= TOL


def test_lm_loss_label_smoothing_and_ignore():
  rng = np.random.default_rng(2)
  b, l, v, eps = 3, 6, 11, 0.1
  logits = rng.normal(size=(b, l, v)).astype(np.float32)
  ids = rng.integers(1, v, (b, l))
  mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
  total, n = 0.0, 0
  for bi in range(b):
    for k in range(l - 1):
      if mask[bi, k + 1]:
        logp = np_log_softmax(logits[bi, k][None].astype(np.float64))[0]
        total += (1 - eps) * -logp[ids[bi, k + 1]] + eps * -logp.mean()
        n += 1
  got = float(lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), eps))
  assert abs(got - total / n) <= TOL
  # captioning: the prompt positions are not targets
  got_p = float(lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask), eps, prompt_length=3))
  assert abs(got_p - got) > 1e-4


# ---- hard negatives ------------------------------------------------------------------------------
def test_local_negatives_stay_in_shard_and_avoid_positive():
  sim = jnp.asarray(np.random.default_rng(3).normal(size=(8, 8)) * 5, jnp.float32)
  w = np.asarray(negative_weights(sim, groups=2))
  assert (np.diag(w) == 0).all() and (w[:4, 4:] == 0).all() and (w[4:, :4] == 0).all()
  assert (w[:4, :4][~np.eye(4, dtype=bool)] >= 1e-4).all()  # the +1e-4 floor
  draws = jax.vmap(lambda r: jnp.stack(hard_negatives(r, sim, sim.T, groups=2)))(
    jax.random.split(jax.random.key(0), 500)
  )  # (500, 2, 8)
  rows = np.arange(8)
  assert (np.asarray(draws) != rows).all()
  assert ((np.asarray(draws) // 4) == rows // 4).all()


def test_global_negatives_never_share_an_image_id():
  idx = jnp.asarray([0, 0, 1, 2, 2, 2, 3, 4])
  sim = jnp.asarray(np.random.default_rng(4).normal(size=(8, 8)), jnp.float32)
  draws = np.asarray(
    jax.vmap(lambda r: jnp.stack(hard_negatives(r, sim, sim.T, idx=idx)))(jax.random.split(jax.random.key(1), 500))
  )
  ids = np.asarray(idx)
  assert (ids[draws] != ids[None, None, :]).all()


def test_excluded_pairs_are_never_drawn_unless_nothing_else_is_left():
  # texts 0, 1 and 3 identical ("a red square"): never each other's negative; row 5's whole shard is
  # excluded, so it keeps its ordinary weights rather than drawing from nothing
  text = np.array([7, 7, 8, 7, 9, 9])
  exclude = text[:, None] == text[None, :]
  exclude[5, :] = exclude[:, 5] = True
  sim = jnp.asarray(np.random.default_rng(6).normal(size=(6, 6)), jnp.float32)
  w = np.asarray(negative_weights(sim, 1, exclude=jnp.asarray(exclude)))
  np.testing.assert_array_equal(w[:5][exclude[:5]], 0.0)
  np.testing.assert_allclose(w[5], np.asarray(negative_weights(sim, 1))[5])
  draws = np.asarray(
    jax.vmap(lambda r: jnp.stack(hard_negatives(r, sim, sim.T, exclude=jnp.asarray(exclude))))(
      jax.random.split(jax.random.key(3), 300)
    )
  )  # (300, 2, 6)
  assert not exclude[np.arange(5)[None, None, :], draws[:, :, :5]].any()


def _chi2_critical(df, z=3.09):
  """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09 -> p = 0.999)."""
  return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def test_negative_frequencies_follow_weights():
  rng = np.random.default_rng(5)
  sim = jnp.asarray(rng.normal(size=(6, 6)) * 2, jnp.float32)
  n = 20000
  draws = np.asarray(
    jax.vmap(lambda r: hard_negatives(r, sim, sim.T, groups=1)[1])(jax.random.split(jax.random.key(2), n))
  )  # negative text for each image: weights of sim (i2t)
  w = np.asarray(negative_weights(sim, 1))
  for row in range(6):
    p = w[row] / w[row].sum()
    counts = np.bincount(draws[:, row], minlength=6)
    keep = p > 0
    stat = ((counts[keep] - n * p[keep]) ** 2 / (n * p[keep])).sum()
    assert counts[~keep].sum() == 0
    assert stat < _chi2_critical(keep.sum() - 1), (row, stat)


def test_alpha_ramp():
  from blip_jax.losses import alpha_schedule

  assert float(alpha_schedule(0, 100)) == 0.0
  assert abs(float(alpha_schedule(50, 100)) - 0.2) < 1e-7
  assert abs(float(alpha_schedule(10**6, 100)) - 0.4) < 1e-7


def test_shuffled_texts_permute_only_the_inner_tokens():
  ids = jnp.asarray([[101, 5, 6, 7, 8, 102, 0, 0], [101, 9, 102, 0, 0, 0, 0, 0], [101, 3, 4, 102, 0, 0, 0, 0]])
  mask = (ids > 0).astype(jnp.int32)
  fallback = jnp.full_like(ids, 77)
  for seed in range(20):
    out = np.asarray(shuffled_texts(jax.random.key(seed), ids, mask, fallback))
    row = out[0]
    assert row[0] == 101 and row[5] == 102 and (row[6:] == 0).all()
    assert sorted(row[1:5]) == [5, 6, 7, 8] and list(row[1:5]) != [5, 6, 7, 8]
    assert (out[1] == 77).all()  # one inner token: nothing to shuffle, the fallback text instead
    assert list(out[2]) in ([101, 4, 3, 102, 0, 0, 0, 0], [77] * 8)

"""The jitted pretraining step: EMA before the momentum forward, enqueue at the pointer, validation
before compiling, one compile for many steps, schedules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.models import Blip, tiny
from blip_jax.models.momentum import momentum_view
from blip_jax.tasks.pretrain import Objective, init_state, make_train_step
from blip_jax.train.optimizer import finetune_cosine_schedule, make_optimizer, pretrain_schedule

B, Q = 8, 24


@pytest.fixture(scope="module")
def setup():
  c = tiny("pretrain")
  # no dropout, so the momentum features are a deterministic function of the momentum params
  c = c.replace(text=dataclasses.replace(c.text, hidden_dropout=0.0, attention_dropout=0.0))
  obj = Objective(queue_size=Q, alpha_ramp_steps=4)
  tx = make_optimizer(pretrain_schedule(1e-4, 2, 10))
  rng = np.random.default_rng(0)
  batch = {
    "images": jnp.asarray(rng.normal(size=(B, 32, 32, 3)), jnp.float32),
    "ids": jnp.asarray(np.concatenate([np.full((B, 1), 101), rng.integers(1000, 1100, (B, 6))], 1)),
    "mask": jnp.ones((B, 7), jnp.int32),
  }
  step = jax.jit(make_train_step(c, obj, tx))
  state0 = init_state(c, obj, tx, jax.random.key(0))
  state1, metrics = step(state0, batch)
  return c, obj, step, batch, state0, state1, metrics


def test_ema_is_exact_and_precedes_momentum_forward(setup):
  c, obj, _, batch, s0, s1, _ = setup
  clamped = dict(s0["params"], temp=jnp.clip(s0["params"]["temp"], c.temp_min, c.temp_max))
  want = jax.tree.map(lambda m, p: 0.995 * m + 0.005 * p, s0["momentum"], momentum_view(clamped))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(s1["momentum"])):  # jit may fuse to FMA: 1 ulp
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-9)
  # momentum never gets gradients: params moved, momentum moved only by the EMA
  assert not np.array_equal(s1["params"]["text_proj"]["kernel"], s0["params"]["text_proj"]["kernel"])


def test_enqueue_writes_momentum_features_of_updated_momentum_at_pointer(setup):
  c, _, _, batch, s0, s1, _ = setup
  m = Blip(c)
  mv = s1["momentum"]
  img = m.apply({"params": mv}, batch["images"], method=Blip.encode_image)
  feat_i = m.apply({"params": mv}, img, method=Blip.image_feature)
  feat_t = m.apply(
    {"params": mv},
    m.apply({"params": mv}, batch["ids"], batch["mask"], method=Blip.encode_text),
    method=Blip.text_feature,
  )
  np.testing.assert_allclose(s1["queues"]["image"][:B], feat_i, atol=1e-6)
  np.testing.assert_allclose(s1["queues"]["text"][:B], feat_t, atol=1e-6)
  np.testing.assert_array_equal(s1["queues"]["image"][B:], s0["queues"]["image"][B:])
  assert int(s1["queues"]["ptr"]) == B and int(s1["step"]) == 1


def test_queue_wraps_and_step_compiles_once(setup):
  _, _, step, batch, _, s1, _ = setup
  s = s1
  for _ in range(10):
    s, metrics = step(s, batch)
  assert int(s["queues"]["ptr"]) == (11 * B) % Q
  assert step._cache_size() == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_losses_reported_and_alpha_ramps(setup):
  *_, metrics = setup
  assert {"loss", "loss_itc", "loss_itm", "loss_lm", "temp", "alpha", "grad_norm"} <= set(metrics)
  np.testing.assert_allclose(
    float(metrics["loss"]), float(metrics["loss_itc"] + metrics["loss_itm"] + metrics["loss_lm"]), rtol=1e-6
  )
  assert float(metrics["alpha"]) == 0.0  # step 0 of the ramp


def _smoke(**overrides):
  from experiments import demo

  cfg = demo.get_config("smoke")
  for key, value in overrides.items():
    node = cfg
    for part in key.split(".")[:-1]:
      node = node[part]
    node[key.split(".")[-1]] = value
  return cfg


def test_queue_not_multiple_of_global_batch_rejected_before_compiling():
  from blip_jax.train import build

  with pytest.raises(ValueError, match=r"config.queue_size=20 is not a multiple of the global batch 8"):
    build.experiment(_smoke(**{"objective.queue_size": 20}), 8)
  with pytest.raises(ValueError, match=r"\(micro\)batch 4 is not divisible by config.negative_groups=8"):
    build.experiment(_smoke(accum_steps=2), 8)


def test_schedules():
  lr = pretrain_schedule(3e-4, warmup_steps=3000, steps_per_epoch=10000, decay_rate=0.9)
  np.testing.assert_allclose(float(lr(0)), 1e-6)
  np.testing.assert_allclose(float(lr(1500)), 1e-6 + (3e-4 - 1e-6) * 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(5000)), 3e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(25000)), 3e-4 * 0.81, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10**9)), 1e-6)  # floor
  cos = finetune_cosine_schedule(1e-5, steps_per_epoch=100, epochs=6)
  np.testing.assert_allclose(float(cos(0)), 1e-5)
  np.testing.assert_allclose(float(cos(300)), 0.5e-5, rtol=1e-6)


def test_tiny_model_overfits_eight_fixed_pairs():
  """Each loss falls by >= 80% within 300 steps. Settings a fixed-pair run needs, and why:
  queue_size=0 (with fixed pairs a queue holds stale copies of every positive, which ITC must score
  as negatives: a floor of log(1 + copies)); momentum 0.9 (at 0.995 the distillation targets still
  carry ~22% of the initial weights after 300 steps). alpha stays 0.4, label smoothing 0.1 (whose
  floor caps the LM drop near 87%)."""
  import optax

  c = tiny("pretrain")
  obj = Objective(queue_size=0, momentum=0.9, alpha=0.4, alpha_ramp_steps=50)
  tx = make_optimizer(optax.constant_schedule(3e-3), weight_decay=0.0)
  rng = np.random.default_rng(0)
  batch = {
    "images": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
    "ids": jnp.asarray(np.concatenate([np.full((8, 1), 101), rng.integers(1000, 1100, (8, 7))], 1)),
    "mask": jnp.ones((8, 8), jnp.int32),
  }
  step = jax.jit(make_train_step(c, obj, tx), donate_argnums=0)
  state = init_state(c, obj, tx, jax.random.key(0))
  history = []
  for _ in range(300):
    state, m = step(state, batch)
    history.append({k: float(m[k]) for k in ("loss_itc", "loss_itm", "loss_lm")})
  for k in history[0]:
    last = np.mean([h[k] for h in history[-10:]])
    assert last <= 0.2 * history[0][k], (k, history[0][k], last)


def test_gradient_accumulation_of_identical_microbatches_equals_one_step():
  """Two identical microbatches of 2 pairs (each pair's only hard negative is the other: sampling
  is deterministic), no dropout: the accumulated step must equal one plain step on one microbatch,
  with one EMA update and one optimizer step, and enqueue all 4 momentum features."""
  c = tiny("pretrain")
  c = c.replace(text=dataclasses.replace(c.text, hidden_dropout=0.0, attention_dropout=0.0))
  obj = Objective(queue_size=8, alpha_ramp_steps=1)
  tx = make_optimizer(pretrain_schedule(1e-3, 1, 10))
  rng = np.random.default_rng(1)
  half = {
    "images": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
    "ids": jnp.asarray(np.concatenate([np.full((2, 1), 101), rng.integers(1000, 1100, (2, 5))], 1)),
    "mask": jnp.ones((2, 6), jnp.int32),
  }
  double = jax.tree.map(lambda x: jnp.concatenate([x, x]), half)
  s0 = init_state(c, obj, tx, jax.random.key(0))
  one, m1 = jax.jit(make_train_step(c, obj, tx))(s0, half)
  acc, m2 = jax.jit(make_train_step(c, obj, tx, accum_steps=2))(s0, double)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(acc["params"])):
    np.testing.assert_allclose(b, a, atol=2e-6)
  for a, b in zip(jax.tree.leaves(one["momentum"]), jax.tree.leaves(acc["momentum"])):
    np.testing.assert_array_equal(b, a)
  assert int(acc["queues"]["ptr"]) == 4 and int(one["queues"]["ptr"]) == 2
  np.testing.assert_allclose(acc["queues"]["image"][2:4], acc["queues"]["image"][:2], atol=1e-6)
  np.testing.assert_allclose(acc["queues"]["image"][:2], one["queues"]["image"][:2], atol=1e-6)
  from blip_jax.train import build

  with pytest.raises(ValueError, match="config.accum_steps=3"):
    build.experiment(_smoke(accum_steps=3), 8)


def test_itm_pairs_equal_one_call_per_pair(setup):
  from blip_jax.tasks.pretrain import itm_pair_logits

  c, _, _, batch, state0, _, _ = setup
  params = state0["params"]
  model = Blip(c)
  img = model.apply({"params": params}, batch["images"], method=Blip.encode_image)
  ids, mask = batch["ids"], batch["mask"].at[:, 5:].set(jnp.asarray([[1, 0]] * 4 + [[0, 0]] * 4))
  neg_img = jnp.asarray([3, 0, 1, 7, 2, 2, 5, 6])
  neg_txt = jnp.asarray([1, 2, 0, 5, 7, 4, 3, 3])
  extra = ((ids[:, ::-1], mask),)

  def itm(i, m, im, rng=None, image_index=None):
    del rng
    return model.apply({"params": params}, i, m, im, method=Blip.itm_logits, image_index=image_index)

  pos, neg = jax.jit(lambda *a: itm_pair_logits(itm, *a))(ids, mask, img, neg_img, neg_txt, extra)

  # every pair scored alone, its image picked by hand
  one_pair = jax.jit(
    lambda i, m, im: model.apply({"params": params}, i[None], m[None], im[None], method=Blip.itm_logits)
  )

  def alone(t_ids, t_mask, image):
    return one_pair(t_ids, t_mask, img[image])[0]

  want_pos = [alone(ids[k], mask[k], k) for k in range(B)]
  want_neg = [alone(ids[k], mask[k], int(neg_img[k])) for k in range(B)]
  want_neg += [alone(ids[int(neg_txt[k])], mask[int(neg_txt[k])], k) for k in range(B)]
  want_neg += [alone(extra[0][0][k], extra[0][1][k], k) for k in range(B)]
  np.testing.assert_allclose(np.asarray(pos), np.stack(want_pos), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(neg), np.stack(want_neg), atol=1e-5, rtol=0)

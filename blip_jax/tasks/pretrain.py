"""BLIP's pretraining step (reference section 5, in its exact order) and the plain-dict train state.
Retrieval fine-tuning (tasks/retrieval.py) runs the same step on a model without the decoder: no LM,
ITC targets by image id, ITM negatives from the online similarities with same-id pairs masked.

state = {"step", "params", "momentum", "opt_state", "queues": {"image", "text", "ptr"[, "idx"]}, "rng"}
batch = {"images" (B, H, W, 3), "ids" (B, L) with [CLS] first, "mask" (B, L)[, "idx" (B,) image ids]}
B is the global batch: ITC negatives span all data shards; ITM negatives are drawn per shard
("local", like the official per-GPU pretraining) or over the whole batch ("global", retrieval).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from blip_jax.losses import alpha_schedule, hard_negatives, itc_loss, itm_loss, lm_loss, shuffled_texts
from blip_jax.models.blip import Blip, init_params, l2_normalize
from blip_jax.models.config import BlipConfig
from blip_jax.models.momentum import momentum_view
from blip_jax.tasks import Task


@dataclasses.dataclass(frozen=True)
class Objective:
  """Hyper-parameters of the three losses."""

  queue_size: int = 57600  # 0 = no queue: in-batch ITC only (ablation; also what a fixed-pair overfit needs)
  momentum: float = 0.995
  alpha: float = 0.4
  alpha_ramp_steps: int = 1  # 2 epochs of steps in pretraining, 1 epoch in retrieval fine-tuning
  label_smoothing: float = 0.1
  negatives: str = "local"  # ITM negatives drawn "local" (per data shard) or "global" (whole batch)
  negative_groups: int = 1  # number of data shards for "local"
  multi_positive: bool = False  # retrieval fine-tuning: ITC targets and ITM negatives by image id
  prompt_length: int = 0  # captioning: leading decoder positions ([DEC] + prompt) that are not targets
  # Not in the paper: never draw an ITM negative whose text equals the positive's word for word. Web
  # data rarely repeats a caption; a small world ("a red square") does all the time, and such false
  # negatives teach the ITM head to reject true pairs (the CapFilt filter then drops clean texts).
  distinct_text_negatives: bool = False
  # Not in the paper: B more ITM negatives, each image with its own text's tokens shuffled (NegCLIP's
  # word-order negatives), so the ITM head learns that word salad of the right words is no match.
  shuffled_text_negatives: bool = False


def losses(model: BlipConfig) -> tuple[str, ...]:
  """The loss metrics the step reports for this model."""
  return ("loss", "loss_itc", "loss_itm") + (("loss_lm",) if "lm_head" in model.components else ())


def init_state(model: BlipConfig, obj: Objective, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
  """Fresh state: momentum = copy of params (as the official model starts), queues random normal,
  L2-normalised; idx queue -100."""
  r_params, r_iq, r_tq, r_state = jax.random.split(rng, 4)
  params = init_params(model, r_params)
  queues = {
    "image": l2_normalize(jax.random.normal(r_iq, (obj.queue_size, model.embed_dim))),
    "text": l2_normalize(jax.random.normal(r_tq, (obj.queue_size, model.embed_dim))),
    "ptr": jnp.zeros((), jnp.int32),
  }
  if model.task == "retrieval":
    queues["idx"] = jnp.full((obj.queue_size,), -100, jnp.int32)
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "momentum": jax.tree.map(jnp.array, momentum_view(params)),
    "opt_state": tx.init(params),
    "queues": queues,
    "rng": r_state,
  }


def ema(momentum: dict, params: dict, m: float) -> dict:
  """p_m = m * p_m + (1 - m) * p over the momentum sub-tree."""
  return jax.tree.map(lambda pm, p: m * pm + (1.0 - m) * p, momentum, momentum_view(params))


def enqueue(queues: dict, image_feat_m, text_feat_m, idx=None) -> dict:
  """Write the global batch of momentum features at the pointer and advance it (wraps exactly)."""
  if queues["image"].shape[0] == 0:
    return queues
  ptr, b = queues["ptr"], image_feat_m.shape[0]
  out = dict(queues)
  out["image"] = jax.lax.dynamic_update_slice(queues["image"], image_feat_m.astype(jnp.float32), (ptr, 0))
  out["text"] = jax.lax.dynamic_update_slice(queues["text"], text_feat_m.astype(jnp.float32), (ptr, 0))
  if idx is not None:
    out["idx"] = jax.lax.dynamic_update_slice(queues["idx"], idx.astype(queues["idx"].dtype), (ptr,))
  out["ptr"] = (ptr + b) % queues["image"].shape[0]
  return out


def make_train_step(model_config: BlipConfig, obj: Objective, tx: optax.GradientTransformation, accum_steps: int = 1):
  """(state, batch) -> (state, metrics); pure, to be wrapped in jax.jit by the caller.

  Gradient accumulation (`accum_steps` > 1) splits the global batch into microbatches that run one
  after another (lax.scan), summing gradients. Per step, as without accumulation: temp is clamped and
  the EMA updated once, before any momentum forward; the optimizer steps once; all microbatches'
  momentum features are enqueued together at the end. Per microbatch: ITC scores its own
  microbatch plus the queue (the queue does not change within the step), and ITM hard negatives are
  drawn within the microbatch. So a step with k microbatches sees B/k in-batch ITC negatives and
  ITM candidates instead of B: the losses, not only the memory, differ from the full batch.
  """
  model = Blip(model_config)
  c = model_config
  with_lm = "lm_head" in c.components

  def apply(params, method, *args, rng=None, **kw):
    rngs = {"dropout": rng} if rng is not None else {}
    return model.apply({"params": params}, *args, method=method, rngs=rngs, **kw)

  def micro(params, momentum, queues, alpha, batch, rng):
    """Loss, gradients and momentum features of one (micro)batch."""
    images, ids, mask = batch["images"], batch["ids"], batch["mask"]
    idx = batch.get("idx")
    r = lambda i: jax.random.fold_in(rng, i)
    img_m = apply(momentum, Blip.encode_image, images, train=True, rng=r(0))
    image_feat_m = apply(momentum, Blip.image_feature, img_m)
    text_feat_m = apply(momentum, Blip.text_feature, apply(momentum, Blip.encode_text, ids, mask, train=True, rng=r(1)))
    image_feat_m, text_feat_m = jax.lax.stop_gradient((image_feat_m, text_feat_m))
    use_idx = obj.multi_positive

    def loss_fn(p):
      img = apply(p, Blip.encode_image, images, train=True, rng=r(2))
      image_feat = apply(p, Blip.image_feature, img)
      text_feat = apply(p, Blip.text_feature, apply(p, Blip.encode_text, ids, mask, train=True, rng=r(3)))
      temp = p["temp"]
      # 3. ITC over [momentum batch ; queue]
      l_itc, sims = itc_loss(
        image_feat,
        text_feat,
        image_feat_m,
        text_feat_m,
        queues["image"],
        queues["text"],
        temp,
        alpha,
        idx if use_idx else None,
        queues.get("idx") if use_idx else None,
      )
      # 5. ITM: positives, then hard negatives drawn without gradient
      b = ids.shape[0]
      if use_idx:  # retrieval: online image vs online text, same-id pairs masked
        sim_i2t = image_feat @ text_feat.T / temp
        sim_t2i = sim_i2t.T
      else:  # pretraining: the ITC logits (online vs momentum) of the in-batch columns
        sim_i2t, sim_t2i = sims["sim_i2t"][:, :b], sims["sim_t2i"][:, :b]
      groups = obj.negative_groups if obj.negatives == "local" else 1
      same_text = (ids[:, None, :] == ids[None, :, :]).all(-1) if obj.distinct_text_negatives else None
      neg_img, neg_txt = hard_negatives(
        r(4), sim_i2t, sim_t2i, groups=groups, idx=idx if use_idx else None, exclude=same_text
      )
      extra = ()
      if obj.shuffled_text_negatives:
        shuffled = shuffled_texts(r(6), ids, mask, ids[neg_txt])
        same = (shuffled == ids[neg_txt]).all(axis=1, keepdims=True)  # rows that fell back to the negative
        extra = ((shuffled, jnp.where(same, mask[neg_txt], mask)),)
      pos_logits, neg_logits = itm_pair_logits(
        lambda *a, **kw: apply(p, Blip.itm_logits, *a, train=True, **kw), ids, mask, img, neg_img, neg_txt, extra, r(5)
      )
      l_itm = itm_loss(pos_logits, neg_logits)
      if not with_lm:  # retrieval fine-tuning: ITC + ITM only
        return l_itc + l_itm, {"loss_itc": l_itc, "loss_itm": l_itm}
      # 6. LM with label smoothing ([DEC] replaces [CLS] inside decode)
      logits = apply(p, Blip.decode, ids, mask, img, train=True, rng=r(7))
      l_lm = lm_loss(logits, ids, mask, obj.label_smoothing)
      return l_itc + l_itm + l_lm, {"loss_itc": l_itc, "loss_itm": l_itm, "loss_lm": l_lm}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, dict(metrics, loss=loss), (image_feat_m, text_feat_m)

  def step(state, batch):
    rng, r_next = jax.random.split(state["rng"])
    # 1. clamp temp (the official code clamps the stored parameter in place)
    params = dict(state["params"])
    params["temp"] = jnp.clip(params["temp"], c.temp_min, c.temp_max)
    # 2. momentum update first; the momentum forwards happen inside `micro`
    momentum = ema(state["momentum"], params, obj.momentum)
    alpha = alpha_schedule(state["step"], obj.alpha_ramp_steps, obj.alpha)
    queues = state["queues"]
    if accum_steps == 1:
      grads, metrics, (feat_i, feat_t) = micro(params, momentum, queues, alpha, batch, rng)
    else:
      micro_batches = jax.tree.map(lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)

      def body(acc, xs):
        mb, i = xs
        g, m, f = micro(params, momentum, queues, alpha, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (g, m)), f

      zeros = jax.tree.map(jnp.zeros_like, (params, {k: jnp.zeros(()) for k in losses(c)}))
      (grads, metrics), feats = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(accum_steps)))
      grads, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, metrics))
      feat_i, feat_t = (f.reshape((-1,) + f.shape[2:]) for f in feats)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    # 4. enqueue the global batch of momentum features after the loss
    queues = enqueue(queues, feat_i, feat_t, batch.get("idx") if "idx" in queues else None)
    metrics = dict(metrics, temp=params["temp"], alpha=alpha, grad_norm=optax.tree.norm(grads))
    new_state = {
      "step": state["step"] + 1,
      "params": params,
      "momentum": momentum,
      "opt_state": opt_state,
      "queues": queues,
      "rng": r_next,
    }
    return new_state, metrics

  return step


def itm_pair_logits(itm_logits, ids, mask, img, neg_img, neg_txt, extra=(), rng=None):
  """ITM logits of the step's pairs, laid out so that a batch-sharded step moves no K/V between devices.

  Texts paired with their own image (positive, negative text, extra texts) go in one pass, image-major
  (image b's G texts in rows b*G ..), their queries laid end to end against image b's cross-attention
  K/V (`image_index=G`): K/V projected once per image and never gathered. Texts paired with a negative
  image go in a second pass against those image tokens, gathered once (B rows). This costs one more
  K/V projection per image than gathering each layer's K/V by index (the previous layout), but an index
  gather over a sharded batch makes XLA all-gather the whole global batch's K and V in every layer:
  v5p:4x4x4, ViT-B, global batch 2880 went from 15.5 to 55.6 GiB of temporaries per chip that way.
  The official code projects K/V for all 3B pairs.

  Args:
    itm_logits: (ids, mask, image_embeds, rng=, image_index=) -> (N, 2), i.e. Blip.itm_logits applied.
    ids, mask: (B, L); img: (B, N, D) image tokens; neg_img, neg_txt: (B,) indices into the batch.
    extra: ((ids, mask), ...) further negative texts, row b paired with image b.
  Returns:
    (B, 2) positive logits and ((2 + len(extra)) * B, 2) negative logits: text with negative image,
    then negative text with image, then the extra texts.
  """
  b, g = ids.shape[0], 2 + len(extra)
  own_ids = jnp.stack([ids, ids[neg_txt]] + [e[0] for e in extra], axis=1).reshape(b * g, -1)
  own_mask = jnp.stack([mask, mask[neg_txt]] + [e[1] for e in extra], axis=1).reshape(b * g, -1)
  rng_own, rng_neg = (None, None) if rng is None else jax.random.split(rng)
  own = itm_logits(own_ids, own_mask, img, rng=rng_own, image_index=g).reshape(b, g, 2)
  with_neg_img = itm_logits(ids, mask, img[neg_img], rng=rng_neg)
  return own[:, 0], jnp.concatenate([with_neg_img] + [own[:, j] for j in range(1, g)])


def step_flops(exp) -> float:
  """Analytic FLOPs of one step of `exp` (with or without the LM part)."""
  from blip_jax.train import flops

  lm = "lm_head" in exp.model.components
  return flops.pretrain_step_flops(
    exp.model, exp.cfg.global_batch, exp.cfg.text_length, exp.objective.queue_size, lm=lm
  )


TASK = Task(
  name="pretrain",
  init_state=lambda exp, rng: init_state(exp.model, exp.objective, exp.optimizer, rng),
  make_step=lambda exp: make_train_step(exp.model, exp.objective, exp.optimizer, exp.cfg.accum_steps),
  losses=losses,
  step_flops=step_flops,
  evaluator="blip_jax.evaluate.zero_shot:ZeroShot",
  best_metric=None,  # pretraining keeps the latest checkpoints only (the paper selects nothing)
  batch_keys=("images", "ids", "mask"),
)

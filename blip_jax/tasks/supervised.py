"""The train state and step shared by the tasks with one supervised loss and no momentum encoder
(caption, vqa, nlvr): a task supplies `loss_fn(model, params, batch, rng) -> (loss, metrics)`.

state = {"step", "params", "opt_state", "rng"}
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from blip_jax.models.blip import Blip, init_params


def init_state(exp, rng: jax.Array) -> dict:
  r_params, r_state = jax.random.split(rng)
  params = init_params(exp.model, r_params)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": exp.optimizer.init(params), "rng": r_state}


def make_step(exp, loss_fn: Callable) -> Callable:
  """(state, batch) -> (state, metrics): metrics = the loss_fn's (averaged over microbatches) +
  grad_norm. With accum_steps > 1 the batch runs as microbatches one after another (lax.scan) and the
  gradients are averaged; each microbatch's loss is normalised on its own."""
  model, tx, accum = Blip(exp.model), exp.optimizer, exp.cfg.accum_steps
  grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(model, p, b, r), has_aux=True)

  def step(state, batch):
    rng, r_next = jax.random.split(state["rng"])
    params = state["params"]
    if accum == 1:
      (_, metrics), grads = grad_fn(params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
      shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][1], shapes[1]))

      def body(acc, xs):
        mb, i = xs
        (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (m, g)), None

      (metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
      metrics, grads = jax.tree.map(lambda x: x / accum, (metrics, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(params, updates),
      "opt_state": opt_state,
      "rng": r_next,
    }
    return new_state, dict(metrics, grad_norm=optax.tree.norm(grads))

  return step

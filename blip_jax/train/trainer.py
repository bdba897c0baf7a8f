"""The training loop: validate -> mesh -> data -> state (restored, imported or fresh, born sharded) ->
AOT compile with memory report -> steps with metrics, evaluation, async checkpoints and preemption.

Resume priority: the latest checkpoint in the workdir > config.init_from (a Salesforce, HF or blip_jax
checkpoint) > scratch. SIGTERM / SIGINT finish the current step, save, and return normally (exit 0).
A non-finite loss stops the run naming the step; checkpoints are only written after the losses since
the previous one were checked, so the last checkpoint on disk is always a good one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.data.pipeline import global_batch
from blip_jax.train import build, flops, input as input_lib, zero_shot
from blip_jax.train import sharding as S
from blip_jax.train.checkpoints import Checkpointer
from blip_jax.train.metrics_writer import MetricWriter, format_eta
from blip_jax.train.pretrain_step import init_state, make_train_step


LOSSES = ("loss", "loss_itc", "loss_itm", "loss_lm")


class NonFiniteLoss(RuntimeError):
  """Raised when a training loss becomes NaN or infinite."""


class _Preemption:
  """SIGTERM / SIGINT set a flag the loop reads after each step (the step itself is never cut)."""

  def __init__(self):
    self.requested = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when the environment says several processes run this job (a TPU
  pod slice's hosts, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES set by a launcher)."""
  env = os.environ
  multi = (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("JAX_NUM_PROCESSES", "1")) > 1
           or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1)
  if multi and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def total_steps(cfg) -> int:
  return cfg.get("total_steps") or build.steps_per_epoch(cfg) * cfg.epochs


def validate(cfg) -> None:
  """Checks that need no devices, each naming its key (the rest happen in build.* before compiling)."""
  for key in ("log_every", "checkpoint_every"):
    if cfg[key] < 1:
      raise ValueError(f"config.{key}={cfg[key]}: must be >= 1")
  if cfg.eval.every < 0:
    raise ValueError(f"config.eval.every={cfg.eval.every}: must be >= 0 (0: only at the end)")
  if total_steps(cfg) < 1:
    raise ValueError(f"config.total_steps / epochs give {total_steps(cfg)} steps")
  if cfg.model.task != "pretrain":  # the step computes ITC + ITM + LM; fine-tuning steps are not wired yet
    raise ValueError(f"config.model.task={cfg.model.task!r}: this trainer runs 'pretrain' only so far")


def _init_from(path: str, model, state: dict, shardings: dict) -> tuple[dict, list[str]]:
  """Params (and their momentum copies) from a Salesforce / HF / blip_jax checkpoint, pos-embed resized
  to the model's image size; a larger task's checkpoint (pretrain) narrows to this task's params."""
  from blip_jax import convert
  from blip_jax.interop.narrow import select_params
  from blip_jax.interop.state_dict import with_image_size
  from blip_jax.models.momentum import momentum_view

  fmt = convert.infer_src_format(path)
  ckpt = convert.load(path, fmt, None if fmt == "blip_jax" else model.task, None, ())
  ckpt = with_image_size(ckpt, model.vision.image_size)
  params = select_params(state["params"], ckpt.params, path, f"config.model (task {model.task})")
  params = jax.device_put(params, shardings["params"])
  state = dict(state, params=params,
               momentum=jax.device_put(jax.tree.map(jnp.array, momentum_view(params)), shardings["momentum"]))
  return state, list(ckpt.notes)


def _export(state: dict, model, directory: str) -> None:
  """The finished model as a blip_jax checkpoint directory (interop.native): what convert reads."""
  from blip_jax.interop.checkpoint import Checkpoint
  from blip_jax.interop.native import save_native

  queues = {k: np.asarray(v) for k, v in state["queues"].items()}
  save_native(Checkpoint(config=model, params=state["params"], momentum_params=state["momentum"],
                         queues=queues), directory)
  tokenizer = os.path.join(os.path.dirname(directory), "tokenizer.model")
  if os.path.exists(tokenizer):  # the caption CLI finds it here
    shutil.copy(tokenizer, os.path.join(directory, "tokenizer.model"))


def train(cfg, workdir: str) -> dict:
  """Run (or resume) the experiment `cfg` in `workdir`. Returns the last train and eval metrics."""
  maybe_initialize_distributed()
  validate(cfg)
  is_main = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=is_main, tensorboard=cfg.get("tensorboard", True))
  tok = input_lib.tokenizer(cfg, workdir, write=is_main)
  model = build.model_config(cfg, tok)
  mesh_shape = build.mesh_shape(cfg, jax.device_count())
  obj = build.objective(cfg, mesh_shape)
  tx = build.optimizer(cfg)
  lr_fn = build.learning_rate(cfg)  # the schedule inside tx, for logging
  rules = build.sharding_rules(cfg)
  steps = total_steps(cfg)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))
  mesh = S.make_mesh(mesh_shape)
  loader = input_lib.train_loader(cfg, tok, model.vision.image_size, jax.process_index(), jax.process_count())

  # ---- state: born sharded ---------------------------------------------------------------------
  init = lambda rng: init_state(model, obj, tx, rng)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = S.state_shardings(model, tx, mesh, rules, queue_template=abstract["queues"])
  bsh = S.batch_sharding(mesh)
  ckpt = Checkpointer(workdir, cfg.get("keep_checkpoints", 3), cfg.get("async_checkpoints", True))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    latest = ckpt.latest_step()
    if latest is not None:
      target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
      state = ckpt.restore(latest, target, loader)
      writer.text(f"resumed from {ckpt.directory} step {latest}")
    else:
      state = jax.jit(init, out_shardings=shardings)(jax.random.key(cfg.seed))
      if cfg.get("init_from"):
        state, notes = _init_from(cfg.init_from, model, state, shardings)
        writer.text(f"initialised params from {cfg.init_from}" + "".join(f"\n  note: {n}" for n in notes))

    # ---- AOT compile and memory analysis before step 1 -----------------------------------------
    step_fn = jax.jit(make_train_step(model, obj, tx, cfg.accum_steps), in_shardings=(shardings, bsh),
                      out_shardings=(shardings, None), donate_argnums=0)
    example = next(loader)
    batch_shapes = {k: jax.ShapeDtypeStruct((cfg.global_batch,) + v.shape[1:], v.dtype, sharding=bsh)
                    for k, v in example.items()}
    t0 = time.time()
    compiled = step_fn.lower(state, batch_shapes).compile()
    mem = compiled.memory_analysis()
    step_flops = flops.pretrain_step_flops(model, cfg.global_batch, cfg.text_length, obj.queue_size)
    kind = jax.devices()[0].device_kind
    peak = flops.device_peak(kind)
    if mem is not None:
      per_dev = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes \
          - mem.alias_size_in_bytes
      writer.text(f"compiled the step in {time.time() - t0:.1f}s: {per_dev / 2**30:.2f} GiB per device "
                  f"({kind}, mesh {mesh_shape}); {step_flops / 1e12:.3f} TFLOP per step")
    eval_fn = jax.jit(zero_shot.make_eval_fn(model))
    eval_data = zero_shot.collect(input_lib.eval_loader(cfg, tok, model.vision.image_size), cfg.eval.num)

    def run_eval(step):  # always called inside the mesh context above
      m = zero_shot.evaluate(eval_fn, state["params"], eval_data, cfg.eval.batch)
      writer.write(step, m, "eval")
      return m

    # ---- the loop ------------------------------------------------------------------------------
    start = int(jax.device_get(state["step"]))
    config_dict = json.loads(cfg.to_json_best_effort())
    pending, last_train, last_eval = [], {}, {}
    nan_at = cfg.get("debug_nan_at_step", -1)
    t_window, n_window = time.time(), 0
    with _Preemption() as pre:
      step = start
      while step < steps:
        batch = example if example is not None else next(loader)
        example = None
        if step + 1 == nan_at:  # test hook: poison this step's input
          batch = dict(batch, images=np.full_like(batch["images"], np.nan))
        state, metrics = compiled(state, global_batch(batch, bsh))
        step += 1
        n_window += 1
        pending.append((step, metrics))
        boundary = step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == steps or pre.requested
        if not boundary:
          writer.progress(step, steps, (time.time() - t_window) / n_window)
          continue
        host = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, host):
          if not all(math.isfinite(float(m[k])) for k in LOSSES):
            raise NonFiniteLoss(f"non-finite loss at step {s}: " + ", ".join(f"{k}={float(m[k])}" for k in LOSSES) +
                f". The run stopped; the last checkpoint ({ckpt.latest_step()}) is intact.")
        pending = []
        if step % cfg.log_every == 0 or step == steps:
          dt = (time.time() - t_window) / n_window
          m = {k: float(v) for k, v in host[-1].items()}
          m.update(lr=float(lr_fn(step - 1)), seconds_per_step=dt,
                   pairs_per_second=cfg.global_batch / dt,
                   tflops_per_device=step_flops / dt / jax.device_count() / 1e12)
          if peak:
            m["mfu"] = step_flops / dt / jax.device_count() / peak
          if loader.skipped:
            m["skipped_examples"] = loader.skipped
          writer.write(step, m, suffix=f"ETA {format_eta(dt * (steps - step))}")
          last_train, t_window, n_window = m, time.time(), 0
        if cfg.eval.every and step % cfg.eval.every == 0 and step != steps:
          last_eval = run_eval(step)
        if step % cfg.checkpoint_every == 0 or step == steps or pre.requested:
          ckpt.save(step, state, loader, config_dict)
        if pre.requested:
          writer.text(f"{pre.requested}: saved step {step}; exiting")
          break
    if step == steps:
      last_eval = run_eval(step)
      _export(state, model, os.path.join(workdir, "model"))
      writer.text(f"wrote the trained model to {os.path.join(workdir, 'model')} "
                  "(python -m blip_jax.convert turns it into Salesforce or Hugging Face checkpoints)")
  ckpt.close()
  writer.close()
  return {"train": last_train, "eval": last_eval, "step": step}

"""The training loop of every task: validate -> mesh -> data -> state (restored, imported or fresh,
born sharded) -> AOT compile with memory report -> steps with metrics, evaluation, async checkpoints
and preemption. The task (blip_jax.tasks, by config.model.task) supplies the state, the step, the
evaluator and the metric that picks the best model; nothing else here depends on it.

Resume priority: the latest checkpoint in the workdir > config.init_from (a Salesforce, HF or blip_jax
checkpoint, read by `interop.load`) > scratch. SIGTERM / SIGINT finish the current step, save, and
return normally (exit 0); on a pod every process stops at the same step (`Preemption`). A non-finite
loss stops the run naming the step; checkpoints are only written after the losses since the previous
one were checked, so the last checkpoint on disk is always a good one. Whatever stops the loop, the
save in flight is finished and the loader, checkpointer and metric writers are closed.

workdir/: checkpoints/ (the latest, for resuming), model/ (the finished model), best/ (the model of
the best evaluation so far, with best.json), eval/ (result files), metrics.jsonl, tb/, config.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import cpu_bf16, interop, tasks
from blip_jax.data.loader import to_global_arrays
from blip_jax.models.blip import init_params
from blip_jax.models.momentum import momentum_view
from blip_jax.train import build, chips, inputs
from blip_jax.train import sharding as S
from blip_jax.train.ahead_of_time import batch_layout, compile_train_step, format_report, state_layout
from blip_jax.train.best_model import BestModel
from blip_jax.train.checkpoints import Checkpointer
from blip_jax.train.distributed import Preemption, check_processes_agree, maybe_initialize_distributed
from blip_jax.train.metrics_writer import MetricWriter, format_eta
from blip_jax.train.workdir_lock import WorkdirLock


class NonFiniteLoss(RuntimeError):
  """Raised when a training loss becomes NaN or infinite."""


def _init_from(path: str, exp: build.Experiment, state: dict, shardings: dict) -> tuple[dict, list[str]]:
  """Params (and their momentum copies) from any checkpoint `interop.load` reads, narrowed to this
  task and resized to this image size, checked against the state's shapes; or, for
  "vision=PATH;text=PATH", an ImageNet ViT and / or BERT for the towers (interop.towers)."""
  model = exp.model
  towers = interop.towers.parse_spec(path)
  if towers is not None:
    fresh = init_params(model, jax.random.key(exp.cfg.seed))  # on the host: the parts the files lack
    params, notes = interop.towers.load_towers(towers, jax.tree.map(np.asarray, fresh))
  else:
    # the run's own tokenizer decides the vocabulary: one stored beside the checkpoint is not read
    ckpt = interop.load(path, task=model.task, image_size=model.vision.image_size, with_tokenizer=False)
    if ckpt.config.text.share != model.text.share:
      raise ValueError(
        f"config.init_from={path!r} shares encoder and decoder as {ckpt.config.text.share!r}, "
        f"config.model.share is {model.text.share!r}: set them equal"
      )
    params, notes = ckpt.params, list(ckpt.notes)
    if ckpt.fresh:  # parts this checkpoint leaves to initialisation by design (NLVR2's merge layers, head)
      initial = jax.tree.map(np.asarray, init_params(model, jax.random.key(exp.cfg.seed)))
      params, filled = interop.fill_fresh(params, initial, ckpt.fresh)
      notes.append(f"initialised fresh: {len(filled)} tensors ({', '.join(filled[:3])}, ...)")
  params = interop.select_params(state["params"], params, path, f"config.model (task {model.task})")
  state = dict(state, params=jax.device_put(params, shardings["params"]))
  if "momentum" in state:  # the momentum encoder starts as a copy, as the official fine-tuning does
    state["momentum"] = jax.device_put(jax.tree.map(jnp.array, momentum_view(params)), shardings["momentum"])
  return state, notes


def _export(state: dict, exp: build.Experiment, workdir: str, directory: str) -> str:
  """The model of `state` as a blip_jax checkpoint directory with the run's tokenizer: what
  `interop.load`, `convert`, `caption` and `init_from` read."""
  tokenizer = os.path.join(workdir, "tokenizer.model")
  queues = {k: np.asarray(v) for k, v in state["queues"].items()} if "queues" in state else None
  ckpt = interop.Checkpoint(
    config=exp.model, params=state["params"], momentum_params=state.get("momentum"), queues=queues
  )
  interop.save(ckpt, directory, "blip_jax", tokenizer if os.path.exists(tokenizer) else None)
  return directory


def train(cfg, workdir: str) -> dict:
  """Run (or resume) the experiment `cfg` in `workdir`. Returns {"train", "eval": the last metrics,
  "step", "finished": False when a SIGTERM / SIGINT (preemption) stopped it early, saved}.

  Raises WorkdirBusy when another run holds the workdir, ValueError for a bad config (before anything
  compiles), NonFiniteLoss, DataError; in every case the save in flight is finished first."""
  cpu_bf16.enable(cfg.model.get("dtype", "float32"))  # before any backend exists
  maybe_initialize_distributed()
  check_processes_agree(cfg, workdir)
  is_main = jax.process_index() == 0
  with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    # from here until the run returns, SIGTERM / SIGINT mean "stop at the next agreed step and save"
    with Preemption(cfg.get("preemption_check_every", 10)) as pre:
      tok = inputs.tokenizer(cfg, workdir, write=is_main)
      exp = build.experiment(cfg, jax.device_count(), jax.process_count(), tok)
      if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
          f.write(cfg.to_json_best_effort(indent=2))
      writer = MetricWriter(workdir, enabled=is_main, tensorboard=cfg.get("tensorboard", True))
      loader = ckpt = None
      try:
        loader = inputs.train_loader(cfg, tok, exp.model.vision.image_size, jax.process_index(), jax.process_count())
        ckpt = Checkpointer(workdir, cfg.get("keep_checkpoints", 3), cfg.get("async_checkpoints", True))
        return _run(exp, workdir, loader, ckpt, writer, tok, pre)
      finally:  # whatever stopped the run: finish the save in flight, stop reader threads, flush metrics
        if ckpt is not None:
          ckpt.close()
        if loader is not None:
          loader.close()
        writer.close()


def _run(exp: build.Experiment, workdir: str, loader, ckpt: Checkpointer, writer: MetricWriter, tok, pre) -> dict:
  cfg, steps = exp.cfg, exp.total_steps
  mesh = S.make_mesh(exp.mesh_shape)
  specs, shardings = state_layout(exp, mesh)
  bsh = S.batch_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(exp.rules):
    state = _initial_state(exp, specs, shardings, ckpt, loader, writer)
    example = next(loader)
    missing = sorted(set(exp.task.batch_keys) - set(example))
    if missing:
      raise ValueError(f"task {exp.task.name!r} needs {missing} in every batch; config.data.sources do not give them")
    compiled, report = compile_train_step(exp, mesh, specs, shardings, batch_layout(exp, bsh, example))
    writer.text(f"compiled the step in {report['compile_s']:.1f}s\n{format_report(report)}")
    evaluator = tasks.make_evaluator(exp, tok, mesh, os.path.join(workdir, "eval"))
    for note in evaluator.notes:
      writer.text(note)
    best = BestModel(workdir, exp.task.best_metric, log=writer.text)

    def run_eval(step):
      m, samples = evaluator.evaluate(state["params"], step)
      writer.write(step, m, "eval")
      writer.samples(step, samples)
      best.update(step, m, lambda directory: _export(state, exp, workdir, directory))
      return m

    config_dict = json.loads(cfg.to_json_best_effort())
    pending, last_train, last_eval = [], {}, {}
    nan_at = cfg.get("debug_nan_at_step", -1)
    t_window, n_window = time.time(), 0
    step = int(jax.device_get(state["step"]))
    while step < steps:
      batch = example if example is not None else next(loader)
      example = None
      if step + 1 == nan_at:  # test hook: poison this step's input
        batch = dict(batch, images=np.full_like(batch["images"], np.nan))
      state, metrics = compiled(state, to_global_arrays(batch, bsh))
      step += 1
      n_window += 1
      pending.append((step, metrics))
      stop = pre.should_stop(step)
      if not (step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == steps or stop):
        writer.progress(step, steps, (time.time() - t_window) / n_window)
        continue
      host = _check_finite(pending, ckpt, exp.task.losses(exp.model))
      if step % cfg.log_every == 0 or step == steps:
        dt = (time.time() - t_window) / n_window
        last_train = _train_metrics(exp, host[-1], step, dt, report, loader)
        writer.write(step, last_train, suffix=f"ETA {format_eta(dt * (steps - step))}")
        t_window, n_window = time.time(), 0
      pending = []
      if cfg.eval.every and step % cfg.eval.every == 0 and step != steps:
        last_eval = run_eval(step)
      if step % cfg.checkpoint_every == 0 or step == steps or stop:
        ckpt.save(step, state, loader, config_dict)
      if stop:
        writer.text(f"{pre.requested}: saved step {step}; exiting")
        break
    if step == steps:
      last_eval = run_eval(step)
      directory = _export(state, exp, workdir, os.path.join(workdir, "model"))
      writer.text(
        f"wrote the trained model to {directory} "
        "(python -m blip_jax.convert turns it into Salesforce or Hugging Face checkpoints)"
      )
  return {"train": last_train, "eval": last_eval, "step": step, "finished": step == steps}


def _initial_state(exp, specs, shardings, ckpt, loader, writer) -> dict:
  """The latest checkpoint in the workdir, else config.init_from, else a fresh init; born sharded."""
  restored = ckpt.restore_latest(specs, loader, log=writer.text)
  if restored is not None:
    writer.text(f"resumed from {ckpt.directory} step {restored[0]}")
    return restored[1]
  init = lambda rng: exp.task.init_state(exp, rng)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(exp.cfg.seed))
  if exp.cfg.get("init_from"):
    state, notes = _init_from(exp.cfg.init_from, exp, state, shardings)
    writer.text(f"initialised params from {exp.cfg.init_from}" + "".join(f"\n  note: {n}" for n in notes))
  return state


def _check_finite(pending: list, ckpt: Checkpointer, losses: tuple[str, ...]) -> list[dict]:
  """The pending steps' metrics on the host (one transfer); raises NonFiniteLoss naming the first step
  since the last check whose loss is NaN or infinite."""
  host = jax.device_get([m for _, m in pending])
  for (s, _), m in zip(pending, host):
    if not all(math.isfinite(float(m[k])) for k in losses):
      ckpt.wait()  # the save in flight (of checked steps) completes before we name the last good one
      raise NonFiniteLoss(
        f"non-finite loss at step {s}: "
        + ", ".join(f"{k}={float(m[k])}" for k in losses)
        + f". The run stopped; the last checkpoint ({ckpt.latest_step()}) is intact."
      )
  return host


def _train_metrics(exp, metrics, step: int, dt: float, report: dict, loader) -> dict:
  """The logged metrics of `step`: losses and scalars of the step, lr, throughput, TFLOP/s and MFU."""
  cfg, step_flops = exp.cfg, report["step_flops"]
  peak = chips.device_peak(report["device_kind"])
  m = {k: float(v) for k, v in metrics.items()}
  m.update(
    lr=float(exp.learning_rate(step - 1)),
    seconds_per_step=dt,
    pairs_per_second=cfg.global_batch / dt,
    tflops_per_device=step_flops / dt / jax.device_count() / 1e12,
  )
  if peak:
    m["mfu"] = step_flops / dt / jax.device_count() / peak
  if loader.skipped:
    m["skipped_examples"] = loader.skipped
  return m

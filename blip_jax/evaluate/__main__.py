"""python -m blip_jax.evaluate --config experiments/<f>.py[:variant] --checkpoint PATH [--out DIR]
    [--config.key=value ...]

Evaluates a model with the evaluator of its config's task (the one the trainer runs every
`eval.every` steps), on config.eval.sources, sharded over all devices (and hosts) as config.mesh
says. PATH: a blip_jax model directory (a run's `model/` or `best/`), a Salesforce .pth or a Hugging
Face directory. Prints the metrics as json; with --out, writes DIR/metrics.json and the task's result
files (captioning: captions_step_final.json for the COCO / NoCaps servers). The tokenizer is the
config's, as in training.
"""

from __future__ import annotations

import json
import os
import sys

import flax.linen as nn
import jax
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "experiment config file, optionally with :variant", lock_config=True)
flags.DEFINE_string("checkpoint", None, "the model to evaluate (blip_jax directory, Salesforce .pth, HF directory)")
flags.DEFINE_string("out", None, "where to write metrics.json and result files (optional)")
flags.mark_flags_as_required(["config", "checkpoint"])


def evaluate(cfg, checkpoint: str, out_dir: str | None = None) -> dict:
  """The metrics of `checkpoint` under `cfg`'s evaluator. Raises ValueError / CheckpointError /
  DataError naming what is wrong."""
  import tempfile

  from blip_jax import cpu_bf16, interop, tasks
  from blip_jax.models.blip import param_shapes
  from blip_jax.train import build, inputs
  from blip_jax.train import sharding as S
  from blip_jax.train.distributed import maybe_initialize_distributed

  cpu_bf16.enable(cfg.model.get("dtype", "float32"))  # before any backend exists
  maybe_initialize_distributed()
  with tempfile.TemporaryDirectory() as tmp:
    tok = inputs.tokenizer(cfg, tmp, write=False)
  exp = build.experiment(cfg, jax.device_count(), jax.process_count(), tok)
  mesh = S.make_mesh(exp.mesh_shape)
  ckpt = interop.load(checkpoint, task=exp.model.task, image_size=exp.model.vision.image_size, with_tokenizer=False)
  params = interop.select_params(
    param_shapes(exp.model), ckpt.params, checkpoint, f"config.model (task {exp.model.task})"
  )
  template = {"params": param_shapes(exp.model)}
  shardings = S.state_shardings(exp.model, exp.optimizer, mesh, exp.rules, template=template)
  with jax.set_mesh(mesh), nn.logical_axis_rules(exp.rules):
    params = jax.device_put(params, shardings["params"])
    evaluator = tasks.make_evaluator(exp, tok, mesh, out_dir)
    for note in evaluator.notes:
      print(note, flush=True)
    metrics, _ = evaluator.evaluate(params, None)
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump({"checkpoint": os.path.abspath(checkpoint), "task": exp.task.name, **metrics}, f, indent=2)
  return metrics


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from blip_jax.data.sources import DataError
  from blip_jax.interop import CheckpointError

  try:
    metrics = evaluate(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.out)
  except (ValueError, DataError, CheckpointError, OSError) as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(metrics, indent=2))
  return 0


def run():
  """Console entry point (`blip-jax-evaluate`)."""
  from blip_jax.flag_parsing import parse_flags

  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()

"""Compile the real pretraining step ahead of time and report whether it fits.

  python -m blip_jax.aot --config experiments/pretrain_base_14m.py [--topology v5p:4x4x4]
      [--config.global_batch=...]

With --topology, compiles for that TPU slice on this machine (needs `pip install libtpu`; no TPU);
without, for the local devices. Prints the trainable parameter count, the analytic FLOPs of a step
and, per device, argument / output / temporary memory against the chip's HBM. Same validation and
compile path as the trainer (`train.build.experiment`, `train.ahead_of_time`).
"""

from __future__ import annotations

import os
import sys

import jax

from blip_jax.train import build
from blip_jax.train import sharding as S
from blip_jax.train.ahead_of_time import batch_layout, compile_train_step, format_report, state_layout


def topology_devices(name: str):
  """Devices of a TPU topology such as "v5p:4x4x4" (AOT only: nothing runs on them). Raises ValueError."""
  # AOT never touches a chip: let several processes (tests, a second CLI) load libtpu at once
  # instead of contending for /tmp/libtpu_lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies

  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing or unknown name: say which
    raise ValueError(
      f"--topology {name}: cannot describe this TPU topology ({type(e).__name__}: {e}). "
      "Is libtpu installed (`pip install libtpu`)?"
    ) from None


def compile_step(cfg, devices) -> dict:
  """Validate `cfg` for `devices`, compile the sharded train step for them; returns the report."""
  exp = build.experiment(cfg, len(devices))
  mesh = S.make_mesh(exp.mesh_shape, devices)
  specs, shardings = state_layout(exp, mesh)
  _, report = compile_train_step(exp, mesh, specs, shardings, batch_layout(exp, S.batch_sharding(mesh)))
  return report


def main(argv) -> int:
  from absl import flags

  del argv
  try:
    devices = topology_devices(flags.FLAGS.topology) if flags.FLAGS.topology else jax.devices()
    report = compile_step(flags.FLAGS.config, devices)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  return 0


def run():
  """Console entry point (`blip-jax-aot`)."""
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "experiment config file, optionally :variant", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology to compile for, e.g. v5p:4x4x4 (needs libtpu)")
  flags.mark_flags_as_required(["config"])
  app.run(main)  # exits with main's return value


if __name__ == "__main__":
  run()

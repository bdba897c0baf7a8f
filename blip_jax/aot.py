"""Compile the real pretraining step ahead of time and report whether it fits.

  python -m blip_jax.aot --config experiments/pretrain_base_14m.py [--topology v5p:4x4x4]
      [--config.global_batch=...]

With --topology, compiles for that TPU slice on this machine (needs `pip install libtpu`; no TPU);
without, for the local devices. Prints the trainable parameter count, the analytic FLOPs of a step
and, per device, argument / output / temporary memory against the chip's HBM.
"""
from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import flax.linen as nn

from blip_jax.models.param_count import count
from blip_jax.train import build, flops
from blip_jax.train import sharding as S
from blip_jax.train.pretrain_step import init_state, make_train_step


def topology_devices(name: str):
  """Devices of a TPU topology such as "v5p:4x4x4" (AOT only: nothing runs on them)."""
  # AOT never touches a chip: let several processes (tests, a second CLI) load libtpu at once
  # instead of contending for /tmp/libtpu_lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing or unknown name: say which
    raise SystemExit(f"--topology {name}: cannot describe this TPU topology ({type(e).__name__}: {e}). "
                     "Is libtpu installed (`pip install libtpu`)?") from None


def compile_step(cfg, devices) -> dict:
  """Lower and compile the sharded train step for `devices`; returns the figures of the report."""
  model = build.model_config(cfg)
  mesh_shape = build.mesh_shape(cfg, len(devices))
  obj = build.objective(cfg, mesh_shape)  # validates batch / queue / mesh before compiling
  tx = build.optimizer(cfg)
  mesh = S.make_mesh(mesh_shape, devices)
  abstract = jax.eval_shape(lambda: init_state(model, obj, tx, jax.random.key(0)))
  rules = build.sharding_rules(cfg)
  shardings = S.state_shardings(model, tx, mesh, rules, queue_template=abstract["queues"])
  state_in = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abstract, shardings)
  bsh = S.batch_sharding(mesh)
  b, l, s = cfg.global_batch, cfg.text_length, model.vision.image_size
  batch_in = {"images": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=bsh),
              "ids": jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=bsh),
              "mask": jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=bsh)}
  t0 = time.time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(make_train_step(model, obj, tx, cfg.accum_steps), in_shardings=(shardings, bsh),
                   out_shardings=(shardings, None), donate_argnums=0)
    compiled = step.lower(state_in, batch_in).compile()
  mem = compiled.memory_analysis()
  kind = devices[0].device_kind
  per_device = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes \
      - mem.alias_size_in_bytes
  return {"device_kind": kind, "devices": len(devices), "mesh": mesh_shape,
          "trainable_params": count(abstract["params"]), "step_flops": flops.pretrain_step_flops(
              model, b, l, obj.queue_size), "compile_s": time.time() - t0,
          "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
          "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
          "per_device_bytes": per_device, "hbm_bytes": flops.device_hbm(kind)}


def format_report(r: dict) -> str:
  gib = lambda x: f"{x / 2**30:8.2f} GiB"
  lines = [f"devices            {r['devices']} x {r['device_kind']}, mesh (data, fsdp, tensor) = {r['mesh']}",
           f"trainable params   {r['trainable_params']:,d}",
           f"step FLOPs         {r['step_flops'] / 1e15:.3f} PFLOP ({r['step_flops'] / r['devices'] / 1e12:.2f} "
           f"TFLOP per device)",
           f"compile time       {r['compile_s']:.1f} s",
           "per-device memory:",
           f"  arguments        {gib(r['argument_bytes'])}",
           f"  outputs          {gib(r['output_bytes'])}  (aliased with donated arguments: "
           f"{gib(r['alias_bytes']).strip()})",
           f"  temporaries      {gib(r['temp_bytes'])}",
           f"  total            {gib(r['per_device_bytes'])}"]
  if r["hbm_bytes"]:
    fits = r["per_device_bytes"] <= r["hbm_bytes"]
    lines.append(f"  HBM              {gib(r['hbm_bytes'])}  -> {'fits' if fits else 'DOES NOT FIT'} "
                 f"({100 * r['per_device_bytes'] / r['hbm_bytes']:.0f}% used)")
  else:
    lines.append("  HBM              unknown for this device kind")
  return "\n".join(lines)


def main(argv):
  from absl import flags
  del argv
  cfg = flags.FLAGS.config
  devices = topology_devices(flags.FLAGS.topology) if flags.FLAGS.topology else jax.devices()
  try:
    report = compile_step(cfg, devices)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_report(report))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file, optionally :variant", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology to compile for, e.g. v5p:4x4x4 (needs libtpu)")
  flags.mark_flags_as_required(["config"])
  app.run(main)

"""The train step compiled ahead of time, with its per-device memory report: the trainer does this
before step 1 on its devices, and `python -m blip_jax.aot` does the same for a TPU topology that is not
here (MaxText's train_compile pattern: one code path, so what the AOT check proves is what runs)."""

from __future__ import annotations

import math
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from blip_jax.models.param_count import count
from blip_jax.train import chips
from blip_jax.train import sharding as S
from blip_jax.train.build import Experiment


def state_layout(exp: Experiment, mesh) -> tuple[dict, dict]:
  """(abstract state of ShapeDtypeStructs carrying their shardings, the shardings) of `exp` on `mesh`."""
  abstract = jax.eval_shape(lambda: exp.task.init_state(exp, jax.random.key(0)))
  shardings = S.state_shardings(exp.model, exp.optimizer, mesh, exp.rules, template=abstract)
  specs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return specs, shardings


def batch_layout(exp: Experiment, sharding, example: dict | None = None) -> dict:
  """ShapeDtypeStructs of a global batch: from a host batch `example` (its per-process rows scaled to
  the global batch), or from the config (the task's batch_keys)."""
  b = exp.cfg.global_batch
  if example is not None:
    return {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype, sharding=sharding) for k, v in example.items()}
  s, length = exp.model.vision.image_size, exp.cfg.text_length
  shapes = {"images": ((b, s, s, 3), jnp.float32), "ids": ((b, length), jnp.int32)}
  shapes.update(mask=shapes["ids"], idx=((b,), jnp.int32))
  return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=sharding) for k in exp.task.batch_keys}


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4}
_ALL_GATHER = re.compile(r"= (\w+)\[([\d,]*)\]\S* all-gather(?:-start)?\(")


def all_gathers(hlo_text: str) -> list[tuple[str, tuple[int, ...], int]]:
  """(dtype, per-device result shape, bytes) of every all-gather in optimized HLO text, largest first.
  Each op once, as written (one inside a loop body counts once)."""
  out = []
  for m in _ALL_GATHER.finditer(hlo_text):
    shape = tuple(int(d) for d in m.group(2).split(",") if d)
    out.append((m.group(1), shape, _BYTES.get(m.group(1), 8) * math.prod(shape)))
  return sorted(out, key=lambda g: -g[2])


def compile_train_step(exp: Experiment, mesh, state_specs: dict, shardings: dict, batch_specs: dict):
  """Lower and compile the sharded step (state donated). Returns (compiled, report): the report holds
  the device kind and count, mesh, trainable params, analytic step FLOPs, compile seconds and the
  per-device argument / output / temporary / aliased bytes against the chip's HBM, and the step's
  all-gathers (`all_gathers`: what a layout that copies the global batch to every chip shows up as)."""
  t0 = time.time()
  bsh = next(iter(batch_specs.values())).sharding
  with jax.set_mesh(mesh), nn.logical_axis_rules(exp.rules):
    step = jax.jit(
      exp.task.make_step(exp),
      in_shardings=(shardings, bsh),
      out_shardings=(shardings, None),
      donate_argnums=0,
    )
    compiled = step.lower(state_specs, batch_specs).compile()
  devices = mesh.devices.reshape(-1)
  kind = devices[0].device_kind
  report = {
    "device_kind": kind,
    "devices": len(devices),
    "mesh": exp.mesh_shape,
    "trainable_params": count(state_specs["params"]),
    "step_flops": exp.task.step_flops(exp),
    "compile_s": time.time() - t0,
    "hbm_bytes": chips.device_hbm(kind),
    "all_gathers": all_gathers(compiled.as_text()),
  }
  mem = compiled.memory_analysis()
  if mem is not None:  # some backends do not report
    report.update(
      argument_bytes=mem.argument_size_in_bytes,
      output_bytes=mem.output_size_in_bytes,
      temp_bytes=mem.temp_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes,
      per_device_bytes=mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes,
    )
  return compiled, report


def format_report(r: dict) -> str:
  """The report of `compile_train_step` as aligned text."""
  gib = lambda x: f"{x / 2**30:8.2f} GiB"
  lines = [
    f"devices            {r['devices']} x {r['device_kind']}, mesh (data, fsdp, tensor) = {r['mesh']}",
    f"trainable params   {r['trainable_params']:,d}",
    f"step FLOPs         {r['step_flops'] / 1e15:.3f} PFLOP ({r['step_flops'] / r['devices'] / 1e12:.2f} "
    f"TFLOP per device)",
    f"compile time       {r['compile_s']:.1f} s",
  ]
  if "per_device_bytes" not in r:
    return "\n".join(lines + ["per-device memory: not reported by this backend"])
  gathers = r.get("all_gathers", [])
  if gathers:
    dtype, shape, _ = gathers[0]
    lines.append(
      f"all-gathers        {len(gathers)} in the step, {sum(g[2] for g in gathers) / 2**30:.3f} GiB of results per "
      f"device (largest {dtype}{list(shape)})"
    )
  lines += [
    "per-device memory:",
    f"  arguments        {gib(r['argument_bytes'])}",
    f"  outputs          {gib(r['output_bytes'])}  (aliased with donated arguments: {gib(r['alias_bytes']).strip()})",
    f"  temporaries      {gib(r['temp_bytes'])}",
    f"  total            {gib(r['per_device_bytes'])}",
  ]
  if r["hbm_bytes"]:
    fits = r["per_device_bytes"] <= r["hbm_bytes"]
    lines.append(
      f"  HBM              {gib(r['hbm_bytes'])}  -> {'fits' if fits else 'DOES NOT FIT'} "
      f"({100 * r['per_device_bytes'] / r['hbm_bytes']:.0f}% used)"
    )
  else:
    lines.append("  HBM              unknown for this device kind")
  return "\n".join(lines)

"""Mesh, logical-axis rules and the shardings of the train state (flax lm1b / big_vision style).
The logical-axis rules themselves live in the experiment config (experiments/common.py).

The mesh has axes (data, fsdp, tensor) with Auto axis types (Linen's logical constraints assert
under the Explicit default of jax.make_mesh, reference s.11). The batch is split over (data, fsdp);
parameters are split over fsdp along "embed" and over tensor along head/MLP/vocab widths. Shardings
come from `eval_shape` of the boxed state, so the real state is born sharded by `jit(out_shardings)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from blip_jax.models.blip import boxed_param_shapes
from blip_jax.models.config import BlipConfig
from blip_jax.models.momentum import momentum_view

AXES = ("data", "fsdp", "tensor")


def make_mesh(shape: tuple[int, int, int], devices=None) -> jax.sharding.Mesh:
  """(data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all). The shape is
  checked against the device count once, by `build.mesh_shape`."""
  devices = devices if devices is not None else jax.devices()
  try:
    return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  except NotImplementedError:
    # e.g. a size-2 axis on a 4x4x4 torus: no product of whole physical axes gives it, so let
    # the mesh split a physical axis (still contiguous, just less ideal for collectives).
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh(tuple(shape), devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)


def state_shardings(model: BlipConfig, tx: optax.GradientTransformation, mesh, rules, *, template: dict):
  """NamedShardings for every leaf of a task's train state (see blip_jax.tasks).

  Params, their momentum copies (where the state has them) and the optimizer moments follow the
  logical axis names; everything else (step, rng, queues) is replicated. template: the (abstract)
  state, e.g. `jax.eval_shape(task.init_state, ...)`.
  """
  boxed = boxed_param_shapes(model)
  trees = {"params": boxed, "momentum": momentum_view(boxed), "opt_state": jax.eval_shape(tx.init, boxed)}
  logical = nn.get_partition_spec({k: v for k, v in trees.items() if k in template})
  out = nn.logical_to_mesh_sharding(logical, mesh, list(rules))
  replicated = NamedSharding(mesh, P())
  for key, value in template.items():
    if key not in out:
      out[key] = jax.tree.map(lambda _: replicated, value)
  return out


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis over (data, fsdp); everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))

"""The train state is born sharded by the logical rules and the step runs on a (data, fsdp, tensor)
mesh of the 8 simulated devices. (Cross-mesh numerical equality: see the open pretraining issue.)"""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from blip_jax.models import tiny
from blip_jax.train import sharding as S
from blip_jax.train.optimizer import make_optimizer, pretrain_schedule
from blip_jax.train.pretrain_step import Objective, init_state, make_train_step


def test_mesh_needs_matching_device_count(devices):
  with pytest.raises(ValueError, match=r"config.mesh=\(2, 2, 3\) needs 12 devices, 8 available"):
    S.make_mesh((2, 2, 3))


def test_state_born_sharded_and_step_runs_on_3d_mesh(devices):
  c = tiny("pretrain")
  obj = Objective(queue_size=16, alpha_ramp_steps=4)
  tx = make_optimizer(pretrain_schedule(1e-4, 2, 10))
  mesh = S.make_mesh((2, 2, 2))
  queues = jax.eval_shape(lambda: init_state(c, obj, tx, jax.random.key(0))["queues"])
  sh = S.state_shardings(c, tx, mesh, queue_template=queues)
  rng = np.random.default_rng(0)
  batch = {"images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
           "ids": np.concatenate([np.full((8, 1), 101), rng.integers(1000, 1100, (8, 5))], 1).astype(np.int32),
           "mask": np.ones((8, 6), np.int32)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(S.DEFAULT_RULES):
    state = jax.jit(lambda r: init_state(c, obj, tx, r), out_shardings=sh)(jax.random.key(0))
    ffn = state["params"]["text"]["layer_0"]["intermediate"]["kernel"]
    assert ffn.sharding.spec == P("fsdp", "tensor")  # ("embed", "mlp") under DEFAULT_RULES
    assert ffn.addressable_shards[0].data.shape == (16, 32)  # (32, 64) split 2 x 2
    moments = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
               if "['layer_0']['intermediate']['kernel']" in jax.tree_util.keystr(path)]
    assert len(moments) == 2  # Adam's mu and nu follow their param's sharding
    assert all(m.sharding.spec == P("fsdp", "tensor") for m in moments)
    step = jax.jit(make_train_step(c, obj, tx), in_shardings=(sh, S.batch_sharding(mesh)),
                   out_shardings=(sh, None), donate_argnums=0)
    state, metrics = step(state, jax.device_put(batch, S.batch_sharding(mesh)))
  assert int(state["step"]) == 1 and np.isfinite(float(metrics["loss"]))
  assert state["params"]["text"]["layer_0"]["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")

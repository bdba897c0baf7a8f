"""bf16 on CPU: blip_jax's XLA flags are accepted by this jaxlib (an unknown flag aborts the process),
set only for bfloat16 and only before a backend exists, and the bf16 gradient under them tracks float32."""

import json
import logging
import os
import subprocess
import sys

import pytest

from blip_jax import cpu_bf16

# A fresh process (this one's backend already runs): flags set, then the tiny model's pretraining loss
# gradient in bf16 compute (f32 params) against float32.
CHILD = """
import json, os, sys
from blip_jax import cpu_bf16
assert not cpu_bf16.enable("float32") and "XLA_FLAGS" not in os.environ
assert cpu_bf16.enable("bfloat16")
import jax, jax.numpy as jnp, numpy as np
from blip_jax.models import Blip, tiny
from blip_jax.models.blip import init_params
rng = np.random.default_rng(0)
batch = (jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32), jnp.asarray(rng.integers(1000, 2000, (4, 8))),
         jnp.ones((4, 8), jnp.int32))
c32 = tiny("pretrain")
p = init_params(c32, jax.random.key(0))
def loss(params, cfg):
  o = Blip(cfg).apply({"params": params}, *batch)
  return o["logits"].astype(jnp.float32).std() + o["itm_logits"].astype(jnp.float32).std()
grads = [jax.jit(jax.grad(loss), static_argnums=1)(p, c) for c in (c32, c32.replace(dtype="bfloat16"))]
g32, g16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in grads)
print(json.dumps(dict(flags=os.environ["XLA_FLAGS"], cos=float(g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16)),
                      rel=float(np.linalg.norm(g16 - g32) / np.linalg.norm(g32)))))
"""


def test_flags_accepted_and_bf16_gradient_tracks_float32():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "BLIP_JAX_CPU_BF16_FLAGS")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert all(f in r["flags"] for f in cpu_bf16.FLAGS)
  assert r["cos"] > 0.99 and 0 < r["rel"] < 0.1  # bf16 rounding, not a different gradient


def test_too_late_is_logged_and_changes_nothing(monkeypatch, caplog):
  import jax

  jax.devices()  # this process's backend exists
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("BLIP_JAX_CPU_BF16_FLAGS", raising=False)
  with caplog.at_level(logging.WARNING):
    assert not cpu_bf16.enable("bfloat16")
  assert "XLA_FLAGS" not in os.environ and "cannot take effect" in caplog.text
  monkeypatch.setenv("BLIP_JAX_CPU_BF16_FLAGS", "0")
  assert not cpu_bf16.enable("bfloat16")


@pytest.mark.parametrize("present", [True, False])
def test_flags_already_in_the_environment(monkeypatch, present):
  monkeypatch.delenv("BLIP_JAX_CPU_BF16_FLAGS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", " ".join(cpu_bf16.FLAGS) if present else "--xla_force_host_platform_device_count=8")
  assert cpu_bf16.enable("bfloat16") is present  # present: in effect; absent: too late here, left alone

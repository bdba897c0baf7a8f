"""XLA:CPU flags that make bfloat16 compute native on CPU.

By default XLA:CPU (jax 0.12) runs bf16 forward dots on oneDNN but lets the weight-gradient dots of a
training step fall to a slow generic path, so a bf16 step can be slower than float32. These two flags
route every dot, forward and backward, to oneDNN's custom call (AMX / AVX512-BF16 kernels where the CPU
has them): on this project's 2-core test machine a 4-layer 768-wide MLP gradient step went from 140 ms
(bf16, default flags) to 87 ms, float32 unchanged at 162 ms. They only change how the CPU compiler
lowers dots (GPU and TPU programs are unaffected), but they can slow dots with few rows, so blip_jax
sets them only for bfloat16 runs.

XLA reads XLA_FLAGS when JAX creates its first backend: `enable(dtype)` must run before anything
touches a device (the train / evaluate / CapFilt entry points and `blip_jax.load` call it first).
Set BLIP_JAX_CPU_BF16_FLAGS=0 to keep XLA's defaults.
"""

from __future__ import annotations

import logging
import os

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_experimental_onednn_custom_call=true")


def _backends_started() -> bool:
  from jax._src import xla_bridge  # no public equivalent in jax 0.12

  return xla_bridge.backends_are_initialized()


def enable(dtype: str) -> bool:
  """Add FLAGS to XLA_FLAGS when `dtype` is "bfloat16". Returns True when they are in effect for this
  process (set now or already present), False when not wanted (float32, BLIP_JAX_CPU_BF16_FLAGS=0) or
  too late (a backend already exists: logged once, the run goes on with XLA's defaults)."""
  if dtype != "bfloat16" or os.environ.get("BLIP_JAX_CPU_BF16_FLAGS", "1") == "0":
    return False
  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in FLAGS if f.split("=")[0] + "=" not in current]
  if not missing:
    return True
  if _backends_started():
    logging.warning(
      "bfloat16 on CPU: JAX's backend already started, so XLA_FLAGS=%s cannot take effect in this process "
      "(bf16 weight-gradient dots may run slower than float32); set them in the environment to use them",
      " ".join(missing),
    )
    return False
  os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
  return True

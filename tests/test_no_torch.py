"""blip_jax imports, builds and runs its models with torch/transformers/safetensors unavailable."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_models_without_torch():
  code = textwrap.dedent("""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
          def find_spec(self, name, path=None, target=None):
              if name.split(".")[0] in ("torch", "transformers", "safetensors"):
                  raise ImportError(f"{name} blocked for this test")
      sys.meta_path.insert(0, Block())
      import jax, jax.numpy as jnp
      import blip_jax, blip_jax.interop, blip_jax.convert
      from blip_jax.models import Blip, init_params, tiny
      c = tiny("pretrain")
      p = init_params(c, jax.random.key(0))
      out = Blip(c).apply({"params": p}, jnp.zeros((1, 32, 32, 3)), jnp.full((1, 5), 101), jnp.ones((1, 5), int))
      assert out["logits"].shape == (1, 5, 30524)
      assert not any(m.split(".")[0] in ("torch", "transformers", "safetensors") for m in sys.modules)
      print("ok")
  """)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().endswith("ok")

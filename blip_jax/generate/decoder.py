"""The cached decoder step that generation loops over: `models.med.MED` in decoder mode, one token
per row, through its own layers (`MED.cross_kv`, `MED.decode_step`), so training and generation share
one implementation of the text transformer. Functions of the `params["text"]` subtree, so the
decoding loop carries plain arrays: cache (L, N, T, H, Dh) x 2 and cross K/V per layer (N, H, Lk, Dh).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blip_jax.models.config import TextConfig
from blip_jax.models.med import MED


def _med(text_params: dict, cfg: TextConfig) -> MED:
  # compute in the params' dtype (bfloat16 params decode in bfloat16)
  dtype = jax.tree.leaves(text_params["cls"])[0].dtype
  return MED(cfg, dtype=dtype)


def cross_kv(text_params: dict, cfg: TextConfig, image_embeds: jax.Array):
  """(N, Lk, Dv) image tokens -> (K, V), each a tuple over layers of (N, H, Lk, Dh) (MED.cross_kv)."""
  return _med(text_params, cfg).apply({"params": text_params}, image_embeds, method=MED.cross_kv)


def init_cache(cfg: TextConfig, n: int, max_length: int, dtype=jnp.float32):
  """Empty self-attention cache: (K, V), each (layers, n, max_length, H, Dh)."""
  shape = (cfg.num_layers, n, max_length, cfg.num_heads, cfg.hidden_size // cfg.num_heads)
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def step(text_params: dict, cfg: TextConfig, tokens: jax.Array, pos: jax.Array, cache, cross):
  """Next-token logits (N, V) float32 and the updated cache (MED.decode_step)."""
  return _med(text_params, cfg).apply({"params": text_params}, tokens, pos, cache, cross, method=MED.decode_step)

"""blip_jax: BLIP (Bootstrapping Language-Image Pre-training) in JAX/Flax.

`blip_jax.load(path)` returns a ready-to-use model (blip_jax.inference). Importing this package never
imports torch or transformers; only `blip_jax.interop` touches them, lazily.
"""

__version__ = "0.1.0"


def load(path: str, task: str | None = None, dtype: str = "float32", **kw):
  """A BLIP checkpoint (blip_jax directory, Salesforce .pth or Hugging Face directory) as a
  `blip_jax.inference.BlipModel` with its tokenizer and preprocessing. See blip_jax.inference.load."""
  from blip_jax.inference import load as _load

  return _load(path, task, dtype, **kw)

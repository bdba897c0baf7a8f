"""blip_jax: BLIP (Bootstrapping Language-Image Pre-training) in JAX/Flax.

Importing this package never imports torch or transformers; only `blip_jax.interop` touches them, lazily.
"""

__version__ = "0.1.0"

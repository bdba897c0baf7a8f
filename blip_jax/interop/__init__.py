"""Import/export of Salesforce, Hugging Face and blip_jax checkpoints.

The only part of blip_jax that touches torch, transformers or safetensors, and only lazily inside the
functions that need them: `import blip_jax.interop` works without any of them.
"""

from blip_jax.interop import towers
from blip_jax.interop.checkpoint import Checkpoint, CheckpointError, fill_fresh, select_params
from blip_jax.interop.hf import load_hf, save_hf
from blip_jax.interop.load import (
  FORMATS,
  detect_format,
  find_tokenizer,
  load,
  narrow,
  read,
  resize_image,
  save,
  tokenizer_file,
)
from blip_jax.interop.native import load_native, save_native
from blip_jax.interop.salesforce import load_salesforce, save_salesforce
from blip_jax.interop.state_dict import export_state_dict, import_state_dict

__all__ = [
  "Checkpoint",
  "CheckpointError",
  "FORMATS",
  "detect_format",
  "export_state_dict",
  "fill_fresh",
  "find_tokenizer",
  "import_state_dict",
  "load",
  "load_hf",
  "load_native",
  "load_salesforce",
  "narrow",
  "read",
  "resize_image",
  "save",
  "save_hf",
  "save_native",
  "save_salesforce",
  "select_params",
  "tokenizer_file",
  "towers",
]

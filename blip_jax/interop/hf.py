"""Hugging Face transformers BLIP checkpoints: a directory with config.json + model.safetensors.

Reading and writing need only `safetensors` (numpy API), not torch; `from_pretrained` on what we
write loads with no missing or unexpected keys. config.json always states BLIP's real settings
(12 text heads, vision LayerNorm eps 1e-6): transformers' defaults (8 heads, 1e-5) are not BLIP's.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from blip_jax.interop.checkpoint import Checkpoint, CheckpointError
from blip_jax.interop.state_dict import HF_CLASSES, export_state_dict, import_state_dict
from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig

CLASS_TO_TASK = {
  "BlipForConditionalGeneration": "caption",
  "BlipForImageTextRetrieval": "itm",
  "BlipForQuestionAnswering": "vqa",
}


def hf_config(config: BlipConfig, label_smoothing: float = 0.0) -> dict[str, Any]:
  """BlipConfig -> transformers BlipConfig dict (config.json)."""
  v, t = config.vision, config.text
  return {
    "architectures": [HF_CLASSES[config.task]],
    "model_type": "blip",
    "image_text_hidden_size": config.embed_dim,
    "label_smoothing": label_smoothing,
    "text_config": {
      "model_type": "blip_text_model",
      "vocab_size": t.vocab_size,
      "hidden_size": t.hidden_size,
      "encoder_hidden_size": v.width,
      "intermediate_size": t.intermediate_size,
      "num_hidden_layers": t.num_layers,
      "num_attention_heads": t.num_heads,
      "max_position_embeddings": t.max_position_embeddings,
      "hidden_act": "gelu",
      "layer_norm_eps": t.layer_norm_eps,
      "hidden_dropout_prob": t.hidden_dropout,
      "attention_probs_dropout_prob": t.attention_dropout,
      "bos_token_id": t.bos_token_id,
      "eos_token_id": 2,
      "pad_token_id": t.pad_token_id,
      "sep_token_id": t.sep_token_id,
      "label_smoothing": label_smoothing,
    },
    "vision_config": {
      "model_type": "blip_vision_model",
      "hidden_size": v.width,
      "intermediate_size": v.mlp_dim,
      "num_hidden_layers": v.depth,
      "num_attention_heads": v.num_heads,
      "image_size": v.image_size,
      "patch_size": v.patch_size,
      "hidden_act": "gelu",
      "layer_norm_eps": v.layer_norm_eps,
    },
  }


def config_from_hf(cfg: Mapping[str, Any], task: str) -> BlipConfig:
  """transformers config.json dict -> BlipConfig (transformers' defaults where a key is absent)."""
  tc, vc = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
  text = TextConfig(
    vocab_size=tc.get("vocab_size", 30524),
    hidden_size=tc.get("hidden_size", 768),
    num_layers=tc.get("num_hidden_layers", 12),
    num_heads=tc.get("num_attention_heads", 8),
    intermediate_size=tc.get("intermediate_size", 3072),
    max_position_embeddings=tc.get("max_position_embeddings", 512),
    layer_norm_eps=tc.get("layer_norm_eps", 1e-12),
    hidden_dropout=tc.get("hidden_dropout_prob", 0.0),
    attention_dropout=tc.get("attention_probs_dropout_prob", 0.0),
    pad_token_id=tc.get("pad_token_id", 0),
    sep_token_id=tc.get("sep_token_id", 102),
    bos_token_id=tc.get("bos_token_id", 30522),
  )
  vision = VisionConfig(
    image_size=vc.get("image_size", 384),
    patch_size=vc.get("patch_size", 16),
    width=vc.get("hidden_size", 768),
    depth=vc.get("num_hidden_layers", 12),
    num_heads=vc.get("num_attention_heads", 12),
    mlp_dim=vc.get("intermediate_size", 3072),
    layer_norm_eps=vc.get("layer_norm_eps", 1e-5),
  )
  return BlipConfig(task=task, vision=vision, text=text, embed_dim=cfg.get("image_text_hidden_size", 256))


def save_hf(ckpt: Checkpoint, directory: str, label_smoothing: float = 0.0) -> None:
  """Write config.json + model.safetensors, loadable by transformers' `from_pretrained`.

  Tied copies (`cls.predictions.decoder.*`) are left out, as `save_pretrained` does.
  """
  from safetensors.numpy import save_file  # lazy: only interop needs it

  sd = export_state_dict(ckpt, "hf")
  os.makedirs(directory, exist_ok=True)
  save_file(
    {k: np.array(v, order="C") for k, v in sd.items()},
    os.path.join(directory, "model.safetensors"),
    metadata={"format": "pt"},
  )
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config(ckpt.config, label_smoothing), f, indent=2)


def load_hf(path: str, task: str | None = None, config: BlipConfig | None = None, ignore=()) -> Checkpoint:
  """Read a transformers BLIP directory (or a .safetensors file next to a config.json)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  directory = path if os.path.isdir(path) else os.path.dirname(path)
  weights = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.exists(weights):
    raise CheckpointError(
      path,
      "no model.safetensors here (sharded or .bin checkpoints: load them "
      "with transformers and pass model.state_dict() to import_state_dict)",
    )
  cfg = {}
  if os.path.exists(cfg_path):
    try:
      with open(cfg_path) as f:
        cfg = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(cfg_path, f"malformed json at line {e.lineno}: {e.msg}") from None
  arch = (cfg.get("architectures") or [None])[0]
  if task is None:
    if arch not in CLASS_TO_TASK:
      raise CheckpointError(cfg_path, f"cannot tell the task from architectures={arch!r}: pass task=")
    task = CLASS_TO_TASK[arch]
  if config is None:
    if not cfg:
      raise CheckpointError(cfg_path, "config.json is missing: pass config=")
    config = config_from_hf(cfg, task)
  try:
    sd = load_file(weights)
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(weights, f"unreadable safetensors file ({e})") from None
  return import_state_dict(sd, task, "hf", config=config, source=weights, ignore=ignore)

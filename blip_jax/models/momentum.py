"""Which parameters BLIP keeps a momentum (EMA) copy of (reference section 5, step 2).

The ViT, vision_proj, the text encoder (its embeddings, encoder self-attention, cross-attention and
FFN: the official `text_encoder_m` is a whole BertModel) and text_proj. Never the decoder's own
blocks (`decoder_*`: self-attention, and with other sharing settings its cross-attention, FFN and
embeddings), the LM head, itm_head or temp.
"""

from __future__ import annotations

from typing import Any

MOMENTUM_TOP = ("visual_encoder", "vision_proj", "text", "text_proj")
_TEXT_EXCLUDED = ("cls",)


def momentum_view(params: dict[str, Any]) -> dict[str, Any]:
  """The sub-tree of `params` that has a momentum copy (same structure, shared leaves)."""
  out = {k: params[k] for k in MOMENTUM_TOP if k in params}
  if "text" in out:
    out["text"] = {
      name: _strip(sub) if name.startswith("layer_") else sub
      for name, sub in out["text"].items()
      if not _excluded(name)
    }
  return out


def _strip(layer: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in layer.items() if not _excluded(k)}


def _excluded(name: str) -> bool:
  return name in _TEXT_EXCLUDED or name.startswith("decoder_")

"""The starting points the paper pretrains from: an ImageNet ViT for the image encoder and BERT for the
text transformer (reference s.1; the official code loads DeiT-B / timm ViT-L and bert-base-uncased).

`config.init_from = "vision=PATH;text=PATH"` (either part alone is fine) reads:
  vision  a timm / DeiT state dict (.pth / .bin / .pt / .safetensors; {"model": sd} accepted), or a
          big_vision / vit_jax .npz (q/k/v joined; a position table without the [CLS] row gets a zero
          row: big_vision adds no position to [CLS]). The classifier head is dropped; pos_embed is
          resized to the model's image size. Note: big_vision ViTs use tanh-approximate GELU, BLIP's
          timm ViT the exact one, so such a tower computes slightly differently until fine-tuned.
  text    BERT as Hugging Face writes it (a directory with model.safetensors or pytorch_model.bin, or
          such a file): BertModel or BertForPreTraining keys. As the official BLIP init: the shared
          encoder/decoder layers and the decoder's own self-attention all start from BERT's layers, the
          LM head from BERT's MLM head where the file has one; token_type_embeddings and the pooler are
          dropped (BLIP has neither); rows for [DEC]/[ENC] beyond BERT's vocabulary and every
          cross-attention keep their fresh initialisation.
Everything else (projections, ITM head, temp) keeps its fresh initialisation.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from blip_jax.interop.checkpoint import CheckpointError
from blip_jax.interop.keymap import flatten, from_torch, med_key, unflatten, vit_key
from blip_jax.models.pos_embed import resize_pos_embed


def parse_spec(spec: str) -> dict[str, str] | None:
  """ "vision=A;text=B" -> {"vision": A, "text": B}; None for a plain checkpoint path."""
  parts = [p.strip() for p in spec.split(";") if p.strip()]
  if not parts or not all(p.startswith(("vision=", "text=")) for p in parts):
    if any(p.startswith(("vision=", "text=")) for p in parts):
      raise ValueError(f"config.init_from={spec!r}: write 'vision=PATH;text=PATH' (either part alone is fine)")
    return None
  out = {}
  for p in parts:
    name, path = p.split("=", 1)
    if name in out:
      raise ValueError(f"config.init_from={spec!r}: {name}= given twice")
    out[name] = path
  return out


def _read_torch_or_safetensors(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise CheckpointError(path, "no such file or directory")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file

    return dict(load_file(path))
  from blip_jax.interop.salesforce import read_pth

  return {k: v.float().numpy() if hasattr(v, "float") else np.asarray(v) for k, v in read_pth(path).items()}


# ---- vision -------------------------------------------------------------------------------------
def read_vit(path: str) -> dict[str, np.ndarray]:
  """A ViT checkpoint as a timm-named state dict (PyTorch layouts)."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      return _big_vision_to_timm({k.removeprefix("params/"): f[k] for k in f.files}, path)
  sd = _read_torch_or_safetensors(path)
  return {k.removeprefix("module."): v for k, v in sd.items()}


def _big_vision_to_timm(f: Mapping[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """big_vision / vit_jax names and Flax layouts -> timm names and PyTorch layouts."""
  if "cls" not in f:
    raise CheckpointError(path, "no 'cls' token: only [CLS]-pooled ViTs (pool_type 'tok') fit BLIP")
  pos = f.get("pos_embedding", f.get("Transformer/posembed_input/pos_embedding"))
  if pos is None:
    raise CheckpointError(path, "no position embedding (pos_embedding or Transformer/posembed_input/pos_embedding)")
  pos = pos.reshape(1, -1, pos.shape[-1])
  kernel = f["embedding/kernel"]  # (p, p, 3, D) HWIO
  if int(round(np.sqrt(pos.shape[1]))) ** 2 == pos.shape[1]:  # no [CLS] row: big_vision adds none to it
    pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], 1)
  sd = {
    "cls_token": f["cls"].reshape(1, 1, -1),
    "pos_embed": pos,
    "patch_embed.proj.weight": kernel.transpose(3, 2, 0, 1),
    "patch_embed.proj.bias": f["embedding/bias"],
    "norm.weight": f["Transformer/encoder_norm/scale"],
    "norm.bias": f["Transformer/encoder_norm/bias"],
  }
  n = 0
  while f"Transformer/encoderblock_{n}/LayerNorm_0/scale" in f:
    b, t = f"Transformer/encoderblock_{n}/", f"blocks.{n}."
    att = b + "MultiHeadDotProductAttention_1/"
    d = f[att + "query/kernel"].shape[0]
    qkv_w = [f[att + f"{x}/kernel"].reshape(d, -1) for x in ("query", "key", "value")]
    qkv_b = [f[att + f"{x}/bias"].reshape(-1) for x in ("query", "key", "value")]
    sd.update(
      {
        t + "norm1.weight": f[b + "LayerNorm_0/scale"],
        t + "norm1.bias": f[b + "LayerNorm_0/bias"],
        t + "norm2.weight": f[b + "LayerNorm_2/scale"],
        t + "norm2.bias": f[b + "LayerNorm_2/bias"],
        t + "attn.qkv.weight": np.concatenate(qkv_w, 1).T,
        t + "attn.qkv.bias": np.concatenate(qkv_b),
        t + "attn.proj.weight": f[att + "out/kernel"].reshape(-1, d).T,
        t + "attn.proj.bias": f[att + "out/bias"],
        t + "mlp.fc1.weight": f[b + "MlpBlock_3/Dense_0/kernel"].T,
        t + "mlp.fc1.bias": f[b + "MlpBlock_3/Dense_0/bias"],
        t + "mlp.fc2.weight": f[b + "MlpBlock_3/Dense_1/kernel"].T,
        t + "mlp.fc2.bias": f[b + "MlpBlock_3/Dense_1/bias"],
      }
    )
    n += 1
  return sd


def vision_params(sd: Mapping[str, np.ndarray], fresh: dict, source: str) -> tuple[dict, list[str]]:
  """The image encoder's params (our layout, shaped like `fresh`) from a timm-named state dict."""
  out, missing, wrong = [], [], []
  used = set()
  for path, leaf in flatten(fresh):
    key, kind = vit_key(path)
    if key not in sd:
      missing.append(key)
      continue
    used.add(key)
    value = from_torch(np.asarray(sd[key], np.float32), kind)
    if key == "pos_embed" and value.shape != leaf.shape:
      value = resize_pos_embed(value, leaf.shape[1])
    if value.shape != tuple(leaf.shape):
      wrong.append(f"{key} {value.shape} (model {tuple(leaf.shape)})")
    out.append((path, value))
  if missing or wrong:
    raise CheckpointError(
      source,
      "not a ViT of this model's size: "
      + "; ".join(([f"missing {missing[:8]}"] if missing else []) + ([f"wrong shapes {wrong[:8]}"] if wrong else [])),
    )
  unused = sorted(set(sd) - used)
  notes = [f"image encoder from {source}"] + (
    [f"dropped {len(unused)} tensors ({', '.join(unused[:4])}, ...)"] if unused else []
  )
  return unflatten(out), notes


# ---- text -----------------------------------------------------------------------------------------
def read_bert(path: str) -> dict[str, np.ndarray]:
  """A BERT checkpoint as a state dict without the "bert." prefix ("cls.predictions.*" kept)."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise CheckpointError(path, "a BERT directory needs model.safetensors or pytorch_model.bin")
  return {k.removeprefix("bert."): v for k, v in _read_torch_or_safetensors(path).items()}


def text_params(sd: Mapping[str, np.ndarray], fresh: dict, source: str) -> tuple[dict, list[str]]:
  """The MED text tower's params (our layout, shaped like `fresh`) from BERT (see module docstring)."""
  out, missing, kept_fresh, used = [], [], [], set()
  for path, leaf in flatten(fresh):
    key, kind, group = med_key(path)
    key = "cls." + key if group == "cls" else key
    if ".crossattention." in key or (group == "cls" and key not in sd):
      kept_fresh.append(key)
      out.append((path, np.asarray(leaf)))
      continue
    if key not in sd:
      missing.append(key)
      continue
    used.add(key)
    value = from_torch(np.asarray(sd[key], np.float32), kind)
    if key in ("embeddings.word_embeddings.weight", "cls.predictions.bias") and value.shape[0] < leaf.shape[0]:
      value = np.concatenate([value, np.asarray(leaf)[value.shape[0] :]])  # [DEC], [ENC] rows stay fresh
    if value.shape != tuple(leaf.shape):
      raise CheckpointError(source, f"{key}: shape {value.shape}, this model's text tower needs {tuple(leaf.shape)}")
    out.append((path, value))
  if missing:
    raise CheckpointError(source, f"not a BERT of this model's size: missing {missing[:8]}")
  dropped = sorted(k for k in set(sd) - used if not k.endswith("position_ids"))
  notes = [
    f"text transformer from {source} (decoder self-attention copied from BERT's; cross-attention fresh)",
    f"dropped {len(dropped)} BERT tensors ({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''})",
  ]
  if any(k.startswith("cls.") for k in kept_fresh):
    notes.append("no MLM head in the file: the LM head starts fresh")
  return unflatten(out), notes


def load_towers(spec: dict[str, str], fresh_params: dict) -> tuple[dict, list[str]]:
  """`fresh_params` with the image encoder and / or text transformer replaced from `spec`."""
  params, notes = dict(fresh_params), []
  for name in spec:
    if name == "vision":
      params["visual_encoder"], n = vision_params(read_vit(spec[name]), fresh_params["visual_encoder"], spec[name])
    else:
      params["text"], n = text_params(read_bert(spec[name]), fresh_params["text"], spec[name])
    notes += n
  return params, notes

"""Names: blip_jax parameter paths <-> Salesforce and Hugging Face PyTorch keys (reference section 10).

blip_jax module names mirror timm/BERT, so most keys are the path joined by dots. The differences:
  * `blocks_3` / `layer_3`          -> `blocks.3` / `encoder.layer.3`
  * leaves kernel/scale/embedding   -> weight (kernels transposed: torch Linear is (out, in))
  * ViT `patch_embed/kernel`        -> `patch_embed.proj.weight` (our (p*p*3, D) matmul = their conv)
  * MED `decoder_attention`         -> `attention` of the decoder's BERT
  * MED `intermediate`, `output`, `output_LayerNorm` -> `intermediate.dense`, `output.dense`, `output.LayerNorm`
  * MED `cls/transform_*`, `cls/bias` -> `cls.predictions.transform.*`, `cls.predictions.bias`
and the prefix each tower is stored under, which depends on the task (TEXT_PREFIXES).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import numpy as np

# Per task and tower, the Salesforce prefix(es) of each group of MED tensors. A tensor listed under
# two prefixes is stored twice (pretraining shares it between text_encoder and text_decoder.bert).
_ENC = "text_encoder."
_DEC = "text_decoder.bert."
_CLS = "text_decoder.cls."
TEXT_PREFIXES: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
  ("pretrain", "text"): {"shared": (_ENC, _DEC), "enc_sa": (_ENC,), "dec_sa": (_DEC,), "cls": (_CLS,)},
  ("retrieval", "text"): {"shared": (_ENC,), "enc_sa": (_ENC,)},
  ("itm", "text"): {"shared": (_ENC,), "enc_sa": (_ENC,)},
  ("vqa", "text"): {"shared": (_ENC,), "enc_sa": (_ENC,)},
  ("nlvr", "text"): {"shared": (_ENC,), "enc_sa": (_ENC,)},
  ("caption", "text"): {"shared": (_DEC,), "dec_sa": (_DEC,), "cls": (_CLS,)},
  ("vqa", "answer_decoder"): {"shared": (_DEC,), "dec_sa": (_DEC,), "cls": (_CLS,)},
}
MOMENTUM_TEXT_PREFIX = "text_encoder_m."

QUEUE_KEYS = {  # Salesforce buffer names of the ITC queues
  "pretrain": {"image": "image_queue", "text": "text_queue", "ptr": "queue_ptr"},
  "retrieval": {"image": "image_queue", "text": "text_queue", "idx": "idx_queue", "ptr": "ptr_queue"},
}

# Salesforce ViT key (relative to `visual_encoder.`) <-> Hugging Face (relative to `vision_model.`);
# {N} is a block index, a trailing "." matches any leaf. Both directions are generated from this table.
_VISION_NAMES = [
  ("cls_token", "embeddings.class_embedding"),
  ("pos_embed", "embeddings.position_embedding"),
  ("patch_embed.proj.", "embeddings.patch_embedding."),
  ("blocks.{N}.norm1.", "encoder.layers.{N}.layer_norm1."),
  ("blocks.{N}.norm2.", "encoder.layers.{N}.layer_norm2."),
  ("blocks.{N}.attn.qkv.", "encoder.layers.{N}.self_attn.qkv."),
  ("blocks.{N}.attn.proj.", "encoder.layers.{N}.self_attn.projection."),
  ("blocks.{N}.mlp.", "encoder.layers.{N}.mlp."),
  ("norm.", "post_layernorm."),
]


def _rules(pairs):
  """[(from, to)] with {N} -> [(regex, replacement)]."""
  out = []
  for a, b in pairs:
    pat = "^" + re.escape(a).replace(r"\{N\}", r"(\d+)") + ("" if a.endswith(".") else "$")
    out.append((pat, b.replace("{N}", r"\1")))
  return out


_HF_VISION = _rules(_VISION_NAMES)
_SF_VISION = _rules([(b, a) for a, b in _VISION_NAMES])


@dataclasses.dataclass(frozen=True)
class Entry:
  """One blip_jax tensor and the PyTorch key(s) it is stored under."""

  tree: str  # "params" or "momentum_params"
  path: tuple[str, ...]
  keys: tuple[str, ...]  # Salesforce names; several when a shared tensor is stored twice
  kind: str  # "linear" (transpose), "patch" (conv <-> matmul) or "copy"


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  """Yield (path, leaf) of a nested dict in sorted order."""
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, dict):
      yield from flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def unflatten(items) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, v in items:
    d = out
    for p in path[:-1]:
      d = d.setdefault(p, {})
    d[path[-1]] = v
  return out


def _leaf(name: str) -> tuple[str, str]:
  return {
    "kernel": ("weight", "linear"),
    "scale": ("weight", "copy"),
    "embedding": ("weight", "copy"),
    "bias": ("bias", "copy"),
  }[name]


def vit_key(parts: tuple[str, ...]) -> tuple[str, str]:
  """ViT param path (relative) -> (Salesforce key relative to `visual_encoder.`, kind)."""
  if parts in (("cls_token",), ("pos_embed",)):
    return parts[0], "copy"
  if parts[0] == "patch_embed":
    leaf, kind = _leaf(parts[1])
    return f"patch_embed.proj.{leaf}", "patch" if kind == "linear" else kind
  leaf, kind = _leaf(parts[-1])
  mods = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", p) for p in parts[:-1]]
  return ".".join(mods + [leaf]), kind


def med_key(parts: tuple[str, ...]) -> tuple[str, str, str]:
  """MED param path (relative) -> (key relative to its BERT prefix or `cls.`, kind, group)."""
  leaf, kind = _leaf(parts[-1])
  if parts[0] == "embeddings":
    return f"embeddings.{parts[1]}.{leaf}", kind, "shared"
  if parts[0] == "cls":
    if len(parts) == 2:
      return "predictions.bias", "copy", "cls"
    sub = {"transform_dense": "transform.dense", "transform_LayerNorm": "transform.LayerNorm"}[parts[1]]
    return f"predictions.{sub}.{leaf}", kind, "cls"
  m = re.fullmatch(r"layer_(\d+)", parts[0])
  if not m:
    raise KeyError(f"unexpected MED parameter path {'/'.join(parts)}")
  head = f"encoder.layer.{m.group(1)}."
  block = parts[1]
  if block in ("attention", "decoder_attention", "crossattention"):
    group = {"attention": "enc_sa", "decoder_attention": "dec_sa", "crossattention": "shared"}[block]
    name = "attention" if block == "decoder_attention" else block
    return head + ".".join((name,) + parts[2:-1] + (leaf,)), kind, group
  sub = {"intermediate": "intermediate.dense", "output": "output.dense", "output_LayerNorm": "output.LayerNorm"}[block]
  return f"{head}{sub}.{leaf}", kind, "shared"


def entries(task: str, params: dict[str, Any], momentum_params: dict[str, Any] | None = None) -> list[Entry]:
  """Every tensor of a task's params (and momentum params) with its Salesforce key(s)."""
  out = []
  for tree_name, tree, suffix in (("params", params, ""), ("momentum_params", momentum_params, "_m")):
    if tree is None:
      continue
    for path, _ in flatten(tree):
      top, rest = path[0], path[1:]
      if top == "visual_encoder":
        key, kind = vit_key(rest)
        keys = (f"visual_encoder{suffix}.{key}",)
      elif top in ("text", "answer_decoder"):
        key, kind, group = med_key(rest)
        if suffix:
          keys = (MOMENTUM_TEXT_PREFIX + key,)
        else:
          prefixes = TEXT_PREFIXES[(task, top)][group]
          keys = tuple(p + key for p in prefixes)
      elif top == "temp":
        keys, kind = ("temp",), "copy"
      elif top.startswith("cls_head_"):  # nn.Sequential indices: cls_head.0 / cls_head.2
        leaf, kind = _leaf(rest[-1])
        keys = (f"cls_head.{top.removeprefix('cls_head_')}.{leaf}",)
      else:  # vision_proj, text_proj, itm_head
        leaf, kind = _leaf(rest[-1])
        keys = (f"{top}{suffix}.{leaf}",)
      out.append(Entry(tree_name, path, keys, kind))
  return out


def bert_prefixes(task: str, with_momentum: bool) -> list[str]:
  """Prefixes of the BERT models in a Salesforce checkpoint (each carries a position_ids buffer)."""
  seen = []
  for (t, _), groups in TEXT_PREFIXES.items():
    if t == task:
      for prefixes in groups.values():
        seen += [p for p in prefixes if p != _CLS and p not in seen]
  if with_momentum:
    seen.append(MOMENTUM_TEXT_PREFIX)
  return seen


def to_torch(x: np.ndarray, kind: str) -> np.ndarray:
  """blip_jax layout -> PyTorch layout (a view where possible; writers make it contiguous)."""
  if kind == "linear":
    return x.T
  if kind == "patch":  # (p*p*C, D) -> (D, C, p, p)
    p = int(round((x.shape[0] / 3) ** 0.5))
    return x.reshape(p, p, 3, x.shape[1]).transpose(3, 2, 0, 1)
  return x


def from_torch(x: np.ndarray, kind: str) -> np.ndarray:
  """PyTorch layout -> blip_jax layout."""
  if kind == "linear":
    return np.ascontiguousarray(x.T)
  if kind == "patch":  # (D, C, p, p) -> (p*p*C, D)
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0).reshape(-1, x.shape[0]))
  return np.asarray(x)


def torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  """The PyTorch shape of a blip_jax tensor of `shape`."""
  if kind == "linear":
    return tuple(reversed(shape))
  if kind == "patch":
    p = int(round((shape[0] / 3) ** 0.5))
    return (shape[1], 3, p, p)
  return tuple(shape)


def _rename(key: str, old: str, new: str, rules) -> str:
  rel = key[len(old) :]
  for pat, rep in rules:
    if re.search(pat, rel):
      return new + re.sub(pat, rep, rel)
  raise KeyError(key)


def sf_to_hf(key: str) -> str:
  """Salesforce key -> Hugging Face key (text keys are identical; the ViT is renamed)."""
  return _rename(key, "visual_encoder.", "vision_model.", _HF_VISION) if key.startswith("visual_encoder.") else key


def hf_to_sf(key: str) -> str:
  """Hugging Face key -> Salesforce key; unknown vision keys pass through (reported later)."""
  if key.startswith("vision_model."):
    try:
      return _rename(key, "vision_model.", "visual_encoder.", _SF_VISION)
    except KeyError:
      return key
  return key

"""Flat PyTorch-style state dicts (numpy values) <-> blip_jax Checkpoints, for both naming schemes.

`fmt="salesforce"`: the official BLIP keys, complete (position_ids buffers, both copies of tied and
shared tensors, momentum copies and queues where the task has them).
`fmt="hf"`: transformers' BlipForConditionalGeneration / BlipForImageTextRetrieval /
BlipForQuestionAnswering keys (ViT renamed; no buffers, momentum, queues or temp).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

import numpy as np

from blip_jax.interop import keymap
from blip_jax.interop.checkpoint import Checkpoint, CheckpointError
from blip_jax.models.blip import param_shapes
from blip_jax.models.config import TASKS, BlipConfig, TextConfig, VisionConfig
from blip_jax.models.momentum import momentum_view
from blip_jax.models.pos_embed import resize_pos_embed

FORMATS = ("salesforce", "hf")
HF_CLASSES = {
  "caption": "BlipForConditionalGeneration",
  "itm": "BlipForImageTextRetrieval",
  "retrieval": "BlipForImageTextRetrieval",
  "vqa": "BlipForQuestionAnswering",
}
# Named groups a user may ignore on import (`ignore=`): what each covers.
IGNORABLE = {
  "momentum": "momentum copies (*_m.*); the trainer re-initialises them from params",
  "queues": "ITC feature/idx queues and their pointer",
}
_MAX_POSITIONS_BUFFER = 512


def _has_momentum(task: str) -> bool:
  return "momentum" in TASKS[task]


def _expected_tied(task: str, params) -> dict[str, tuple[str, ...]]:
  """Salesforce copies of tied tensors: extra key -> blip_jax path of its source."""
  if "cls" not in params.get("text", {}) and "answer_decoder" not in params:
    return {}
  tower = "answer_decoder" if "answer_decoder" in params else "text"
  return {
    "text_decoder.cls.predictions.decoder.weight": (tower, "embeddings", "word_embeddings", "embedding"),
    "text_decoder.cls.predictions.decoder.bias": (tower, "cls", "bias"),
  }


def export_state_dict(ckpt: Checkpoint, fmt: str = "salesforce") -> dict[str, np.ndarray]:
  """Checkpoint -> flat state dict of numpy arrays (PyTorch layouts)."""
  if fmt not in FORMATS:
    raise ValueError(f"fmt={fmt!r}: must be one of {FORMATS}")
  task = ckpt.config.task
  share = ckpt.config.text.share
  if share != "all_but_sa":
    raise ValueError(
      f"config.text.share={share!r}: the {fmt} format holds only BLIP's encoder / decoder sharing "
      "('all_but_sa': the decoder owns its self-attention, shares everything else), so this model "
      "(a Table 3 ablation) cannot be exported; keep it as a blip_jax checkpoint"
    )
  if fmt == "hf" and task not in HF_CLASSES:
    raise ValueError(
      f"task {task!r} has no Hugging Face class (they are {sorted(HF_CLASSES)}); "
      "export a pretraining checkpoint as salesforce, or narrow it to one task first"
    )
  with_m = fmt == "salesforce" and _has_momentum(task)
  momentum = ckpt.momentum_params if with_m else None
  if with_m and momentum is None:
    momentum = momentum_view(ckpt.params)  # the official model starts with momentum = params
  sd: dict[str, np.ndarray] = {}
  trees = {"params": ckpt.params, "momentum_params": momentum}
  for e in keymap.entries(task, ckpt.params, momentum):
    x = _get(trees[e.tree], e.path)
    t = keymap.to_torch(np.asarray(x), e.kind)
    for k in e.keys:
      sd[k] = t
  if fmt == "hf":
    sd.pop("temp", None)  # BlipForImageTextRetrieval has no temperature
    return {keymap.sf_to_hf(k): v for k, v in sd.items()}
  for prefix in keymap.bert_prefixes(task, with_m):
    sd[prefix + "embeddings.position_ids"] = np.arange(_MAX_POSITIONS_BUFFER, dtype=np.int64)[None]
  for key, path in _expected_tied(task, ckpt.params).items():
    sd[key] = keymap.to_torch(np.asarray(_get(ckpt.params, path)), "copy")
  if task in keymap.QUEUE_KEYS:
    if ckpt.queues is None:
      raise ValueError(
        f"a Salesforce {task!r} checkpoint carries the ITC queues: set Checkpoint.queues "
        "(e.g. from the train state) before exporting"
      )
    sd.update(_queues_to_torch(task, ckpt.queues))
  return sd


def import_state_dict(
  sd: Mapping[str, Any],
  task: str,
  fmt: str = "salesforce",
  config: BlipConfig | None = None,
  source: str = "<state dict>",
  ignore: Iterable[str] = (),
) -> Checkpoint:
  """Flat state dict -> Checkpoint, strictly.

  Args:
    sd: key -> array (numpy, torch tensors or anything np.asarray accepts).
    task: one of TASKS.
    fmt: "salesforce" or "hf".
    config: the target model; inferred from shapes when None (heads = width / 64, as in ViT-B/L
      and BERT-base). When given with another image size, pos_embed is resized (PyTorch bicubic).
    source: file name used in error messages.
    ignore: names from IGNORABLE, or key prefixes, to skip (neither required nor reported).
  Raises:
    CheckpointError listing every missing, unexpected, shape-mismatched or inconsistent key.
  """
  if task not in TASKS:
    raise ValueError(f"task={task!r}: must be one of {sorted(TASKS)}")
  if fmt not in FORMATS:
    raise ValueError(f"fmt={fmt!r}: must be one of {FORMATS}")
  if config is not None and config.text.share != "all_but_sa":
    raise ValueError(
      f"config.text.share={config.text.share!r}: {fmt} checkpoints hold only BLIP's 'all_but_sa' sharing; "
      "a Table 3 ablation model starts from scratch or from a blip_jax checkpoint of the same setting"
    )
  if fmt == "hf" and task not in HF_CLASSES:
    raise CheckpointError(
      source, f"Hugging Face has no class for task {task!r}", hint=f"use one of {sorted(HF_CLASSES)}"
    )
  ignore = set(ignore)
  prefixes = tuple(g for g in ignore if g not in IGNORABLE)
  sd = {(keymap.hf_to_sf(k) if fmt == "hf" else k): v for k, v in sd.items()}
  notes: list[str] = []
  if config is None:
    config = infer_config(sd, task, source)
  elif config.task != task:
    config = config.replace(task=task)
  want_m = fmt == "salesforce" and _has_momentum(task) and "momentum" not in ignore
  shapes = param_shapes(config)
  mshapes = momentum_view(shapes) if want_m else None
  if fmt == "hf" and "temp" in shapes and "temp" not in sd:
    sd["temp"] = np.asarray(config.temp_init, np.float32)
    notes.append(f"temp absent from the Hugging Face checkpoint: set to {config.temp_init}")

  missing, mismatched, inconsistent, consumed = [], [], [], set()
  out: dict[str, list] = {"params": [], "momentum_params": []}
  trees = {"params": shapes, "momentum_params": mshapes}
  for e in keymap.entries(task, shapes, mshapes):
    present = [k for k in e.keys if k in sd]
    consumed.update(present)
    absent = [k for k in e.keys if k not in sd]
    if absent:
      missing += absent
      if not present:
        continue
    x = _to_numpy(sd[present[0]])
    for k in present[1:]:
      if not np.array_equal(x, _to_numpy(sd[k])):
        inconsistent.append(f"{k} != {present[0]}")
    want = keymap.torch_shape(_get(trees[e.tree], e.path).shape, e.kind)
    if e.path[-1] == "pos_embed" and x.shape != want and x.ndim == 3 and x.shape[2] == want[2]:
      try:
        x = resize_pos_embed(x, want[1])
        notes.append(f"{present[0]}: resized {sd[present[0]].shape[1]} -> {want[1]} positions (bicubic)")
      except ValueError:
        pass
    if tuple(x.shape) != want:
      mismatched.append(f"{present[0]}: {tuple(x.shape)} vs {want}")
      continue
    out[e.tree].append((e.path, keymap.from_torch(x, e.kind).astype(np.float32)))

  allowed: set[str] = set()
  for prefix in keymap.bert_prefixes(task, _has_momentum(task)):
    k = prefix + "embeddings.position_ids"
    if k in sd:  # a buffer, not a parameter: accepted if it is the usual arange
      allowed.add(k)
      ids = _to_numpy(sd[k]).reshape(-1)
      if not np.array_equal(ids, np.arange(ids.shape[0])):
        inconsistent.append(f"{k} is not arange({ids.shape[0]})")
    elif fmt == "salesforce" and (want_m or not k.startswith(keymap.MOMENTUM_TEXT_PREFIX)):
      missing.append(k)
  params_tmp = keymap.unflatten(out["params"])
  for key, path in _expected_tied(task, shapes).items():
    if key in sd:
      allowed.add(key)
      src = _get_or_none(params_tmp, path)
      if src is not None and not np.array_equal(keymap.from_torch(_to_numpy(sd[key]), "copy"), src):
        inconsistent.append(f"{key} != tied source {'/'.join(path)}")
    elif fmt == "salesforce":
      missing.append(key)
  queues = None
  if task in keymap.QUEUE_KEYS and fmt == "salesforce":
    qkeys = keymap.QUEUE_KEYS[task]
    if "queues" in ignore:
      allowed.update(qkeys.values())
    else:
      absent = [k for k in qkeys.values() if k not in sd]
      missing += absent
      if not absent:
        allowed.update(qkeys.values())
        queues = _queues_from_torch(task, sd, config, mismatched)

  if "momentum" in ignore:
    allowed.update(k for k in sd if re.match(r"^[a-z_]+_m\.", k))
  unexpected = sorted(
    k for k in sd if k not in consumed and k not in allowed and not (prefixes and k.startswith(prefixes))
  )
  missing = sorted(k for k in set(missing) if not (prefixes and k.startswith(prefixes)))
  if missing or unexpected or mismatched or inconsistent:
    guess = guess_task(sd.keys())
    hint = (
      f"the keys look like a {guess!r} checkpoint; pass --task {guess}"
      if guess and guess != task
      else "pass ignore=[...] (CLI --ignore) to skip named groups: " + ", ".join(IGNORABLE)
    )
    raise CheckpointError(
      source,
      f"does not match a {fmt} {task!r} model of config {_describe(config)}",
      missing=missing,
      unexpected=unexpected,
      mismatched=mismatched,
      inconsistent=inconsistent,
      hint=hint,
    )
  params = keymap.unflatten(out["params"])
  momentum = keymap.unflatten(out["momentum_params"]) if want_m else None
  return Checkpoint(config, params, momentum, queues, notes)


def infer_config(sd: Mapping[str, Any], task: str, source: str = "<state dict>") -> BlipConfig:
  """Model sizes read off a Salesforce-named state dict (heads assumed width / 64)."""

  def shape(key):
    if key not in sd:
      raise CheckpointError(
        source, f"cannot infer the model size for task {task!r}", missing=[key], hint=_task_hint(sd.keys(), task)
      )
    return tuple(np.shape(sd[key]))

  width = shape("visual_encoder.cls_token")[-1]
  d_out, _, patch, _ = shape("visual_encoder.patch_embed.proj.weight")
  depth = 1 + max(
    (int(m.group(1)) for k in sd for m in [re.match(r"visual_encoder\.blocks\.(\d+)\.", k)] if m), default=-1
  )
  tokens = shape("visual_encoder.pos_embed")[1]
  grid = int(round((tokens - 1) ** 0.5))
  vision = VisionConfig(
    image_size=grid * patch,
    patch_size=patch,
    width=width,
    depth=depth,
    num_heads=max(width // 64, 1),
    mlp_dim=shape("visual_encoder.blocks.0.mlp.fc1.weight")[0],
  )
  bert = "text_encoder." if task in ("pretrain", "retrieval", "itm", "vqa", "nlvr") else "text_decoder.bert."
  vocab, hidden = shape(bert + "embeddings.word_embeddings.weight")
  layers = 1 + max(
    (int(m.group(1)) for k in sd for m in [re.match(re.escape(bert) + r"encoder\.layer\.(\d+)\.", k)] if m), default=-1
  )
  text = TextConfig(
    vocab_size=vocab,
    hidden_size=hidden,
    num_layers=layers,
    num_heads=max(hidden // 64, 1),
    intermediate_size=shape(bert + "encoder.layer.0.intermediate.dense.weight")[0],
    max_position_embeddings=shape(bert + "embeddings.position_embeddings.weight")[0],
  )
  if task == "nlvr":  # two branches; merged by a Linear from the first layer that has one
    merged = [
      int(m.group(1))
      for k in sd
      for m in [re.match(re.escape(bert) + r"encoder\.layer\.(\d+)\.crossattention\.output\.merge_layer\.", k)]
      if m
    ]
    text = dataclasses.replace(text, num_cross_branches=2, cross_merge_from_layer=min(merged, default=layers))
  embed_dim = shape("vision_proj.weight")[0] if "vision_proj.weight" in sd else 256
  return BlipConfig(task=task, vision=vision, text=text, embed_dim=embed_dim)


def guess_task(keys: Iterable[str]) -> str | None:
  """Best guess of the Salesforce task a key set came from (for error hints)."""
  keys = set(keys)
  has = lambda p: any(k.startswith(p) for k in keys)
  if "cls_head.0.weight" in keys:
    return "nlvr"
  if "idx_queue" in keys:
    return "retrieval"
  if (
    "image_queue" in keys
    or has("text_encoder_m.")
    or (has("text_encoder.") and has("text_decoder.cls.") and "itm_head.weight" in keys)
  ):
    return "pretrain"
  if has("text_encoder.") and has("text_decoder."):
    return "vqa"
  if has("text_decoder."):
    return "caption"
  if "itm_head.weight" in keys:
    return "itm"
  return None


def _task_hint(keys, task):
  guess = guess_task(keys)
  return f"the keys look like a {guess!r} checkpoint" if guess and guess != task else ""


def _describe(c: BlipConfig) -> str:
  return (
    f"(ViT {c.vision.width}x{c.vision.depth} @ {c.vision.image_size}px, "
    f"text {c.text.hidden_size}x{c.text.num_layers}, vocab {c.text.vocab_size})"
  )


def _queues_to_torch(task: str, queues: Mapping[str, Any]) -> dict[str, np.ndarray]:
  names = keymap.QUEUE_KEYS[task]
  sd = {
    names["image"]: np.ascontiguousarray(np.asarray(queues["image"], np.float32).T),
    names["text"]: np.ascontiguousarray(np.asarray(queues["text"], np.float32).T),
    names["ptr"]: np.asarray([int(queues["ptr"])], np.int64),
  }
  if "idx" in names:
    sd[names["idx"]] = np.asarray(queues["idx"], np.int64)[None]
  return sd


def _queues_from_torch(task, sd, config, mismatched) -> dict[str, Any] | None:
  names = keymap.QUEUE_KEYS[task]
  img, txt = _to_numpy(sd[names["image"]]), _to_numpy(sd[names["text"]])
  if img.ndim != 2 or img.shape[0] != config.embed_dim or txt.shape != img.shape:
    mismatched.append(f"{names['image']}/{names['text']}: {img.shape}/{txt.shape} vs ({config.embed_dim}, Q) each")
    return None
  q = {
    "image": np.ascontiguousarray(img.T.astype(np.float32)),
    "text": np.ascontiguousarray(txt.T.astype(np.float32)),
    "ptr": int(_to_numpy(sd[names["ptr"]]).reshape(-1)[0]),
  }
  if "idx" in names:
    idx = _to_numpy(sd[names["idx"]]).reshape(-1)
    if idx.shape[0] != q["image"].shape[0]:
      mismatched.append(f"{names['idx']}: {idx.shape[0]} entries vs queue size {q['image'].shape[0]}")
      return None
    q["idx"] = idx.astype(np.int64)
  return q


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor: bf16 has no numpy dtype, so widen first
    x = x.detach().cpu()
    if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _get_or_none(tree, path):
  try:
    return _get(tree, path)
  except KeyError:
    return None

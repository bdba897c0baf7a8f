"""Every way a model is loaded (and the matching `save`): one `load()` for Salesforce `.pth`, Hugging
Face directories and blip_jax checkpoints, with task narrowing, position-embedding resize and the
tokenizer found beside the weights.

The trainer (`config.init_from`), the caption CLI, `convert` and every later tool call `load()`; nothing
else reads checkpoint files. Errors are `CheckpointError`s naming the file (library code never exits).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import numpy as np

from blip_jax.interop import hf, native, salesforce
from blip_jax.interop.checkpoint import Checkpoint, CheckpointError, select_params
from blip_jax.interop.state_dict import HF_CLASSES, guess_task
from blip_jax.models.blip import param_shapes
from blip_jax.models.config import TASKS, BlipConfig
from blip_jax.models.momentum import momentum_view
from blip_jax.models.pos_embed import resize_pos_embed

FORMATS = ("salesforce", "hf", "blip_jax")
# The tokenizer a checkpoint directory may carry (the trainer writes tokenizer.model into its model
# directory; official checkpoints pair with a bert-base-uncased vocab.txt placed beside them).
TOKENIZER_FILES = ("tokenizer.model", "vocab.txt")


def detect_format(path: str) -> str:
  """ "blip_jax" (a directory with model.json), "hf" (config.json or a .safetensors file) or
  "salesforce" (.pth/.pt/.bin). Raises CheckpointError when the path says neither."""
  if os.path.isdir(path):
    if native.is_native(path):
      return "blip_jax"
    if os.path.exists(os.path.join(path, "config.json")):
      return "hf"
    raise CheckpointError(path, "a directory with neither model.json (blip_jax) nor config.json (Hugging Face)")
  if path.endswith(".safetensors"):
    return "hf"
  if path.endswith((".pth", ".pt", ".bin")):
    return "salesforce"
  if not os.path.exists(path):
    raise CheckpointError(path, "no such file or directory")
  raise CheckpointError(path, f"cannot tell the checkpoint format; name one of {FORMATS}")


def read(
  path: str,
  fmt: str | None = None,
  task: str | None = None,
  config: BlipConfig | None = None,
  ignore: Iterable[str] = (),
) -> Checkpoint:
  """The checkpoint as stored, in the task its file holds (`task` picks it where the file cannot say:
  a Salesforce state dict whose keys fit several tasks; an HF retrieval model imported as "retrieval")."""
  fmt = fmt or detect_format(path)
  if fmt not in FORMATS:
    raise ValueError(f"fmt={fmt!r}: must be one of {FORMATS}")
  if fmt == "blip_jax":
    return native.load_native(path)
  if fmt == "hf":
    return hf.load_hf(path, task if task in HF_CLASSES else None, config, ignore)
  sd = salesforce.read_pth(path)
  own = guess_task(sd.keys())
  if task is not None and own in (None, task):
    return salesforce.load_salesforce(sd, task, config, ignore, source=path)
  if own is None:
    raise CheckpointError(path, "cannot tell which BLIP model this state dict holds: pass task=")
  return salesforce.load_salesforce(sd, own, config, ignore, source=path)  # narrowed by load()


def narrow(ckpt: Checkpoint, task: str, source: str = "<checkpoint>") -> Checkpoint:
  """The params of `task`'s model taken from a checkpoint of a task that contains them (pretrain ->
  caption / itm / retrieval: they share tensors by design). Queues are not carried across tasks.
  NLVR2 from any image-grounded encoder: as the official loader, both cross-attention branches start
  from the one pretrained cross-attention; the merge layers and the head start fresh (`fresh`)."""
  if task not in TASKS:
    raise ValueError(f"task={task!r}: must be one of {sorted(TASKS)}")
  if task == ckpt.config.task:
    return ckpt
  if task == "nlvr":
    return _two_branches(narrow(ckpt, "itm", source) if ckpt.config.task != "itm" else ckpt, source)
  if task == "vqa" and ckpt.config.task == "pretrain":
    return _question_answer(ckpt, source)
  target = ckpt.config.replace(task=task)
  shapes = param_shapes(target)
  params = select_params(shapes, ckpt.params, source, f"a {task!r} model")
  momentum = None
  if "momentum" in target.components and ckpt.momentum_params is not None:
    momentum = select_params(momentum_view(shapes), ckpt.momentum_params, source, f"{task!r} momentum copies")
  notes = list(ckpt.notes) + [f"narrowed the {ckpt.config.task!r} checkpoint to task {task!r}"]
  return Checkpoint(target, params, momentum, None, notes)


def _two_branches(ckpt: Checkpoint, source: str) -> Checkpoint:
  """An image-grounded encoder (task itm) as the NLVR2 model: every layer's cross-attention `self`
  copied to `self0` / `self1` and its output `dense` to `dense0` / `dense1` (the official
  blip_nlvr.load_checkpoint); merges from half the depth on (6 of BERT-base's 12 layers)."""
  text = dataclasses.replace(
    ckpt.config.text, num_cross_branches=2, cross_merge_from_layer=ckpt.config.text.num_layers // 2
  )
  config = ckpt.config.replace(task="nlvr", text=text)
  tower = {}
  for name, sub in ckpt.params["text"].items():
    if name.startswith("layer_"):
      cross = sub["crossattention"]
      out = {k: v for k, v in cross["output"].items() if k != "dense"}
      out.update(dense0=cross["output"]["dense"], dense1=_copy(cross["output"]["dense"]))
      sub = dict(sub, crossattention={"self0": cross["self"], "self1": _copy(cross["self"]), "output": out})
    tower[name] = sub
  params = {"visual_encoder": ckpt.params["visual_encoder"], "text": tower}
  notes = list(ckpt.notes) + [
    f"NLVR2 from the {ckpt.config.task!r} image-grounded encoder: both cross-attention branches copy its "
    "cross-attention; merge layers and cls_head start fresh"
  ]
  return Checkpoint(config, params, None, None, notes, fresh=("merge_layer", "cls_head_0", "cls_head_2"))


def _question_answer(ckpt: Checkpoint, source: str) -> Checkpoint:
  """A pretraining checkpoint as the VQA model, as the official blip_vqa load_checkpoint: the question
  encoder is the image-grounded encoder, the answer decoder the image-grounded decoder. Its
  cross-attention K/V read the question's states (text width) instead of the image's: where the
  widths differ (ViT-L) those K/V start fresh, as the official loader drops mis-shaped tensors."""
  encoder, decoder = narrow(ckpt, "itm", source), narrow(ckpt, "caption", source)
  config = ckpt.config.replace(task="vqa")
  answer = decoder.params["text"]
  fresh: tuple[str, ...] = ()
  if ckpt.config.vision.width != ckpt.config.text.hidden_size:
    answer = {
      name: dict(sub, crossattention=_without_kv(sub["crossattention"])) if name.startswith("layer_") else sub
      for name, sub in answer.items()
    }
    fresh = ("crossattention",)
  params = {
    "visual_encoder": encoder.params["visual_encoder"],
    "text": encoder.params["text"],
    "answer_decoder": answer,
  }
  notes = list(ckpt.notes) + [
    "VQA from the pretraining checkpoint: question encoder = its encoder, answer decoder = its decoder"
  ]
  if fresh:
    notes.append("the answer decoder's cross-attention key/value start fresh (vision width != text width)")
  return Checkpoint(config, params, None, None, notes, fresh=fresh)


def _without_kv(cross: dict) -> dict:
  return dict(cross, self={k: v for k, v in cross["self"].items() if k not in ("key", "value")})


def _copy(tree):
  return {k: _copy(v) if isinstance(v, dict) else np.array(v) for k, v in tree.items()}


def resize_image(ckpt: Checkpoint, image_size: int) -> Checkpoint:
  """The checkpoint at another image size: pos_embed (and its momentum copy) resized on the params tree
  with PyTorch's bicubic kernel (reference s.2); nothing else changes."""
  old = ckpt.config.vision
  if image_size == old.image_size:
    return ckpt
  vision = dataclasses.replace(old, image_size=image_size)
  # BlipConfig checks that the new size is a multiple of the patch
  config = ckpt.config.replace(vision=vision)

  def resized(tree):
    if tree is None:
      return None
    ve = dict(tree["visual_encoder"])
    ve["pos_embed"] = resize_pos_embed(np.asarray(ve["pos_embed"]), vision.num_tokens)
    return dict(tree, visual_encoder=ve)

  notes = list(ckpt.notes) + [
    f"pos_embed resized {old.num_tokens} -> {vision.num_tokens} positions "
    f"({old.image_size} -> {image_size} px, bicubic)"
  ]
  return Checkpoint(config, resized(ckpt.params), resized(ckpt.momentum_params), ckpt.queues, notes)


def tokenizer_file(path: str, explicit: str | None = None) -> str | None:
  """The tokenizer file given, or the one stored beside the checkpoint (its directory, then the
  directory above, where the trainer writes it); None when there is none."""
  if explicit:
    if not os.path.isfile(explicit):
      raise CheckpointError(explicit, "tokenizer file not found")
    return explicit
  here = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  for d in (here, os.path.dirname(os.path.abspath(here))):
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(d, name)):
        return os.path.join(d, name)
  return None


def find_tokenizer(path: str, explicit: str | None = None):
  """The Tokenizer of `tokenizer_file(path, explicit)`, or None."""
  from blip_jax.data.tokenizer import SentencePieceTokenizer, WordPieceTokenizer

  f = tokenizer_file(path, explicit)
  if f is None:
    return None
  return SentencePieceTokenizer(f) if f.endswith(".model") else WordPieceTokenizer(f)


def load(
  path: str,
  task: str | None = None,
  image_size: int | None = None,
  *,
  fmt: str | None = None,
  config: BlipConfig | None = None,
  ignore: Iterable[str] = (),
  tokenizer: str | None = None,
  need_tokenizer: bool = False,
  with_tokenizer: bool = True,
) -> Checkpoint:
  """Any BLIP checkpoint as the model of `task` at `image_size`.

  Args:
    path: a Salesforce .pth, a Hugging Face directory (config.json + model.safetensors) or a blip_jax
      directory (model.json + state/).
    task: the model wanted (None: the checkpoint's own). A larger task's checkpoint narrows to it.
    image_size: resize pos_embed to this size (None: keep).
    fmt, config, ignore: see `read`.
    tokenizer: an explicit vocab.txt / tokenizer.model; else the one beside the checkpoint.
    need_tokenizer: raise when no tokenizer is found (else `.tokenizer` is None).
    with_tokenizer: False: do not look for one (a caller with its own vocabulary, e.g. the trainer).
  Returns:
    Checkpoint with config, params (numpy, blip_jax layout), momentum_params / queues where the task has
    them, notes and tokenizer.
  Raises:
    CheckpointError naming the file and every offending key.
  """
  ckpt = read(path, fmt, task, config, ignore)
  if task is not None:
    ckpt = narrow(ckpt, task, path)
  if image_size is not None:
    ckpt = resize_image(ckpt, image_size)
  ckpt.tokenizer = find_tokenizer(path, tokenizer) if with_tokenizer or tokenizer or need_tokenizer else None
  if need_tokenizer and ckpt.tokenizer is None:
    raise CheckpointError(
      path,
      f"no tokenizer beside the checkpoint (looked for {', '.join(TOKENIZER_FILES)} "
      "here and one directory up): pass one (a bert-base-uncased vocab.txt for the "
      "official checkpoints)",
    )
  if ckpt.tokenizer is not None and ckpt.tokenizer.vocab_size != ckpt.config.text.vocab_size:
    raise CheckpointError(
      path, f"the tokenizer has {ckpt.tokenizer.vocab_size} tokens, the model {ckpt.config.text.vocab_size}"
    )
  return ckpt


def save(ckpt: Checkpoint, dst: str, fmt: str, tokenizer_file: str | None = None) -> None:
  """Write `ckpt` as fmt "blip_jax" (directory), "hf" (directory) or "salesforce" (.pth file)."""
  if fmt == "blip_jax":
    native.save_native(ckpt, dst, tokenizer_file)
  elif fmt == "hf":
    hf.save_hf(ckpt, dst)
  elif fmt == "salesforce":
    salesforce.save_salesforce(ckpt, dst)
  else:
    raise ValueError(f"fmt={fmt!r}: must be one of {FORMATS}")

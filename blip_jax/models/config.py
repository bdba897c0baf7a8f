"""Model configuration: plain frozen dataclasses (hashable, so Linen modules can hold them).

Experiment files (ml_collections) build these through `BlipConfig.from_dict`; interop infers them from
checkpoint shapes. Defaults are BLIP's ViT-B/16 + BERT-base MED (reference sections 2-4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Which towers and heads each task's model owns. The official checkpoints differ exactly this way
# (reference/salesforce_state_dict_keys.txt), so export and import derive their key sets from it.
TASKS: dict[str, frozenset[str]] = {
  # text_encoder_sa: bidirectional self-attention (ITC / ITM modes);
  # text_decoder_sa + lm_head: causal self-attention and LM head of the decoder mode.
  "pretrain": frozenset({"vision", "text_encoder_sa", "text_decoder_sa", "lm_head", "proj", "itm", "temp", "momentum"}),
  "retrieval": frozenset({"vision", "text_encoder_sa", "proj", "itm", "temp", "momentum"}),
  "itm": frozenset({"vision", "text_encoder_sa", "proj", "itm"}),
  "caption": frozenset({"vision", "text_decoder_sa", "lm_head"}),
  # VQA: image-grounded question encoder (`text`) and a separate answer decoder that cross-attends to
  # the question encoder's states (its cross-attention K/V width is the text width).
  "vqa": frozenset({"vision", "text_encoder_sa", "answer_decoder"}),
  # NLVR2: the image-grounded encoder with two cross-attention branches (one per image) and an MLP
  # head on [ENC]; its text config has num_cross_branches=2.
  "nlvr": frozenset({"vision", "text_encoder_sa", "cls_head"}),
}

# Encoder / decoder parameter sharing settings of the MED (paper Table 3), BLIP's first.
SHARING = ("all_but_sa", "all", "all_but_ca", "none")

# Special token ids of bert-base-uncased + BLIP's two added tokens (reference section 3).
PAD_ID, CLS_ID, SEP_ID, MASK_ID, DEC_ID, ENC_ID = 0, 101, 102, 103, 30522, 30523


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """timm-style ViT. Defaults: ViT-B/16 at 224 px."""

  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """CLS + patches."""
    return 1 + self.grid**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Post-LN BERT used as the MED text transformer. Defaults: BERT-base with BLIP's 30524 vocab."""

  vocab_size: int = 30524
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  pad_token_id: int = PAD_ID
  cls_token_id: int = CLS_ID
  sep_token_id: int = SEP_ID
  bos_token_id: int = DEC_ID  # [DEC]
  enc_token_id: int = ENC_ID  # [ENC]
  # NLVR2 (reference s.7): two cross-attention branches, averaged below this layer, merged by a
  # Linear(2D -> D) from it on. 1 branch = every other task.
  num_cross_branches: int = 1
  cross_merge_from_layer: int = 6
  # What the decoder mode shares with the encoder modes (paper Table 3): "all_but_sa" (BLIP: its own
  # causal self-attention), "all" (one self-attention, causal in decoder mode), "all_but_ca" (its own
  # cross-attention, shared self-attention) or "none" (its own embeddings and layers). Only BLIP's
  # choice has a PyTorch checkpoint format; the others are for the ablation.
  share: str = "all_but_sa"


@dataclasses.dataclass(frozen=True)
class BlipConfig:
  """A whole BLIP model for one task (see TASKS)."""

  task: str = "pretrain"
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  embed_dim: int = 256  # ITC projection width
  temp_init: float = 0.07
  temp_min: float = 0.001
  temp_max: float = 0.5
  dtype: str = "float32"  # compute dtype; params always param_dtype
  param_dtype: str = "float32"
  # Rematerialisation per tower: "none", "full" (save nothing inside a block) or "dots" (save matmuls).
  vision_remat: str = "none"
  vision_remat_blocks: int = 0  # with vision_remat: only the last n ViT blocks (official vit_ckpt_layer); 0 = all
  text_remat: str = "none"

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"config.task={self.task!r}: must be one of {sorted(TASKS)}")
    v, t = self.vision, self.text
    if v.image_size % v.patch_size:
      raise ValueError(
        f"config.vision.image_size={v.image_size} is not a multiple of config.vision.patch_size={v.patch_size}"
      )
    if v.width % v.num_heads:
      raise ValueError(f"config.vision.width={v.width} is not divisible by num_heads={v.num_heads}")
    if t.hidden_size % t.num_heads:
      raise ValueError(f"config.text.hidden_size={t.hidden_size} is not divisible by num_heads={t.num_heads}")
    if (self.task == "nlvr") != (t.num_cross_branches == 2):
      raise ValueError(
        f"config.text.num_cross_branches={t.num_cross_branches}: task 'nlvr' needs 2 (one per image), "
        "every other task 1"
      )
    if t.share not in SHARING:
      raise ValueError(f"config.text.share={t.share!r}: must be one of {SHARING}")
    if t.share != "all_but_sa" and self.task in ("vqa", "nlvr"):
      raise ValueError(f"config.text.share={t.share!r}: task {self.task!r} supports only BLIP's 'all_but_sa'")
    if not 0 <= self.vision_remat_blocks <= v.depth:
      raise ValueError(f"config.vision_remat_blocks={self.vision_remat_blocks}: must be in [0, {v.depth}]")
    for name in ("vision_remat", "text_remat"):
      if getattr(self, name) not in ("none", "full", "dots"):
        raise ValueError(f"config.{name}={getattr(self, name)!r}: must be 'none', 'full' or 'dots'")

  @property
  def components(self) -> frozenset[str]:
    return TASKS[self.task]

  def replace(self, **kw) -> "BlipConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BlipConfig":
    """Inverse of to_dict; unknown keys are an error naming the key."""
    d = dict(d)
    sub = {"vision": VisionConfig, "text": TextConfig}
    for k, klass in sub.items():
      if k in d and isinstance(d[k], dict):
        d[k] = _strict(klass, d[k], f"config.{k}")
    return _strict(cls, d, "config")


def _strict(klass, d: dict[str, Any], where: str):
  names = {f.name for f in dataclasses.fields(klass)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
  return klass(**d)


def vit_b16(image_size: int = 224, drop_path_rate: float = 0.0) -> VisionConfig:
  return VisionConfig(image_size=image_size, drop_path_rate=drop_path_rate)


def vit_l16(image_size: int = 224, drop_path_rate: float = 0.1) -> VisionConfig:
  return VisionConfig(
    image_size=image_size, width=1024, depth=24, num_heads=16, mlp_dim=4096, drop_path_rate=drop_path_rate
  )


def tiny(
  task: str = "pretrain", image_size: int = 32, vision_width: int = 48, text_width: int = 32, vocab_size: int = 30524
) -> BlipConfig:
  """A few-hundred-kB model for tests and CPU smoke runs (2 layers, real token ids)."""
  return BlipConfig(
    task=task,
    vision=VisionConfig(
      image_size=image_size, patch_size=8, width=vision_width, depth=2, num_heads=4, mlp_dim=2 * vision_width
    ),
    text=TextConfig(
      vocab_size=vocab_size,
      hidden_size=text_width,
      num_layers=2,
      num_heads=4,
      intermediate_size=2 * text_width,
      max_position_embeddings=64,
      num_cross_branches=2 if task == "nlvr" else 1,
      cross_merge_from_layer=1,  # tiny NLVR2: layer 0 averages, layer 1 merges (both paths exercised)
    ),
    embed_dim=16,
  )

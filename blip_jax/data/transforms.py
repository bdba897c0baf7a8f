"""BLIP image preprocessing (reference section 6), on PIL images, per example.

Every random draw comes from `example_rng(seed, index, epoch)`, so a resumed run sees exactly the same
augmentations. Draws (`sample_train`) are separate from their application (`apply_train`), which keeps
them inspectable and testable.

RandomAugment follows the official BLIP list and magnitudes (N=2, M=5): ops drawn with replacement,
each applied with p=0.5; at M=5 brightness/sharpness factors are 1.0, shear +-0.15, translate +-5 px,
rotate +-15 deg, fill 128. The official code uses OpenCV; we use PIL (nearest-neighbour affine warps),
so interpolation at non-integer offsets differs slightly.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
AUGMENTS = (
  "Identity",
  "AutoContrast",
  "Brightness",
  "Sharpness",
  "Equalize",
  "ShearX",
  "ShearY",
  "TranslateX",
  "TranslateY",
  "Rotate",
)
FILL = (128, 128, 128)


def example_rng(seed: int, index: int, epoch: int) -> np.random.Generator:
  """The generator of one example's draws: a pure function of (seed, index, epoch)."""
  return np.random.default_rng([seed, epoch, index])


def sample_resized_crop(rng, height: int, width: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop.get_params: (top, left, h, w), 10 tries then a central crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class TrainDraw:
  crop: tuple[int, int, int, int]  # top, left, height, width
  flip: bool
  augments: tuple[tuple[str, bool, float], ...]  # (op, applied, signed magnitude)


def sample_train(
  rng, height: int, width: int, scale=(0.2, 1.0), randaug_n: int = 2, randaug_m: int = 5, augments=AUGMENTS
) -> TrainDraw:
  crop = sample_resized_crop(rng, height, width, scale)
  flip = bool(rng.random() < 0.5)
  ops = []
  for name in rng.choice(np.array(augments), randaug_n):
    applied = bool(rng.random() < 0.5)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    ops.append((str(name), applied, sign * _magnitude(str(name), randaug_m)))
  return TrainDraw(crop, flip, tuple(ops))


def _magnitude(op: str, m: int) -> float:
  """Official level_to_args at magnitude m (max 10)."""
  if op in ("Brightness", "Sharpness"):
    return (m / 10.0) * 1.8 + 0.1  # an enhance factor: 1.0 at M=5 (sign ignored)
  if op in ("ShearX", "ShearY"):
    return (m / 10.0) * 0.3
  if op in ("TranslateX", "TranslateY"):
    return (m / 10.0) * 10.0
  if op == "Rotate":
    return (m / 10.0) * 30.0
  return 0.0


def apply_augment(img: Image.Image, op: str, value: float) -> Image.Image:
  if op == "Identity":
    return img
  if op == "AutoContrast":
    return ImageOps.autocontrast(img)
  if op == "Equalize":
    return ImageOps.equalize(img)
  if op == "Brightness":
    return ImageEnhance.Brightness(img).enhance(abs(value))
  if op == "Sharpness":
    return ImageEnhance.Sharpness(img).enhance(abs(value))
  if op == "ShearX":
    return img.transform(img.size, Image.AFFINE, (1, value, 0, 0, 1, 0), fillcolor=FILL)
  if op == "ShearY":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, value, 1, 0), fillcolor=FILL)
  if op == "TranslateX":  # the output pixel x samples input x + value: content moves by -value
    return img.transform(img.size, Image.AFFINE, (1, 0, value, 0, 1, 0), fillcolor=FILL)
  if op == "TranslateY":
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, value), fillcolor=FILL)
  if op == "Rotate":
    return img.rotate(value, fillcolor=FILL)
  raise ValueError(f"unknown augmentation {op!r}; known: {AUGMENTS}")


def normalize(img: Image.Image) -> np.ndarray:
  """uint8 RGB -> float32 (H, W, 3): to [0, 1], then (x - mean) / std per channel."""
  return (np.asarray(img.convert("RGB"), np.float32) / 255.0 - MEAN) / STD


def apply_train(img: Image.Image, draw: TrainDraw, size: int) -> np.ndarray:
  """RandomResizedCrop (bicubic) -> flip -> RandomAugment -> normalise. (size, size, 3) float32."""
  top, left, h, w = draw.crop
  img = img.convert("RGB").crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  if draw.flip:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  for op, applied, value in draw.augments:
    if applied:
      img = apply_augment(img, op, value)
  return normalize(img)


def train_transform(img: Image.Image, size: int, seed: int, index: int, epoch: int, scale=(0.2, 1.0)) -> np.ndarray:
  """The whole training transform of example `index` in `epoch` (scale 0.2 pretrain, 0.5 fine-tune)."""
  rng = example_rng(seed, index, epoch)
  return apply_train(img, sample_train(rng, img.height, img.width, scale), size)


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
  """Resize to (size, size) bicubic, aspect not kept; normalise."""
  return normalize(img.convert("RGB").resize((size, size), Image.BICUBIC))

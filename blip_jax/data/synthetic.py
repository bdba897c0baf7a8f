"""A synthetic world of coloured shapes: the default, offline training data, and CapFilt's testbed.

Example i is a pure function of (seed, i): 1-3 objects (colour, shape) in distinct cells of a 3x3 grid,
rendered with PIL, and a caption generated from that metadata ("a red circle left of a blue square",
"two green triangles", ...), VQA questions about it and NLVR2 statements about two scenes. With
`noise > 0`, exactly round(noise * N) examples (a seeded permutation) get their caption replaced the
way web alt-text is wrong: another scene's caption (mismatched) or a word-shuffled / word-dropped one
(corrupted). `clean` records which pairs are untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 80, 220),
  "yellow": (230, 210, 40),
  "purple": (140, 60, 170),
  "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
NUMBERS = {2: "two", 3: "three"}
BACKGROUND = (235, 235, 235)


@dataclasses.dataclass(frozen=True)
class Obj:
  color: str
  shape: str
  row: int  # grid cell, 0..2 top to bottom
  col: int  # 0..2 left to right


@dataclasses.dataclass(frozen=True)
class Example:
  index: int
  objects: tuple[Obj, ...]
  caption: str  # what the pipeline trains on (possibly noisy)
  true_caption: str  # generated from the objects
  clean: bool


def sample_scene(rng: np.random.Generator) -> tuple[Obj, ...]:
  n = int(rng.integers(1, 4))
  cells = rng.permutation(9)[:n]
  if n > 1 and rng.random() < 0.3:  # a repeated object, for counting captions
    color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    return tuple(Obj(color, shape, int(c) // 3, int(c) % 3) for c in cells)
  return tuple(Obj(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), int(c) // 3, int(c) % 3) for c in cells)


def describe(objects: tuple[Obj, ...], rng: np.random.Generator) -> str:
  """A caption that is true of `objects`."""
  kinds = {(o.color, o.shape) for o in objects}
  if len(objects) > 1 and len(kinds) == 1:
    o = objects[0]
    return f"{NUMBERS[len(objects)]} {o.color} {o.shape}s"
  if len(objects) == 1:
    return f"a {objects[0].color} {objects[0].shape}"
  a, b = (objects[i] for i in rng.permutation(len(objects))[:2])
  if a.col != b.col and (a.row == b.row or rng.random() < 0.5):
    rel = "left of" if a.col < b.col else "right of"
  else:
    rel = "above" if a.row < b.row else "below"
  return f"a {a.color} {a.shape} {rel} a {b.color} {b.shape}"


def render(objects: tuple[Obj, ...], size: int = 96, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
  """The scene; `shift` moves every object by (dx, dy) in units of a cell (video frames)."""
  img = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(img)
  cell = size / 3
  for o in objects:
    x0, y0 = (o.col + shift[0]) * cell + cell * 0.15, (o.row + shift[1]) * cell + cell * 0.15
    x1, y1 = x0 + cell * 0.7, y0 + cell * 0.7
    fill = COLORS[o.color]
    if o.shape == "circle":
      draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
      draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
      draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
  return img


class SyntheticWorld:
  """Random-access source: len() and [i] -> (PIL image, Example)."""

  def __init__(
    self, num_examples: int, seed: int = 0, noise: float = 0.0, image_size: int = 96, noisy_prefix: int | None = None
  ):
    """noisy_prefix: only examples [0, noisy_prefix) can be noisy (held-out tails stay clean);
    exactly round(noise * noisy_prefix) of them are."""
    if not 0.0 <= noise <= 1.0:
      raise ValueError(f"noise={noise}: must be in [0, 1]")
    self.num_examples, self.seed, self.noise, self.image_size = num_examples, seed, noise, image_size
    eligible = num_examples if noisy_prefix is None else min(noisy_prefix, num_examples)
    order = np.random.default_rng([seed, 1]).permutation(eligible)
    self._noisy = frozenset(order[: int(round(noise * eligible))].tolist())

  def __len__(self) -> int:
    return self.num_examples

  def example(self, i: int) -> Example:
    if not 0 <= i < self.num_examples:
      raise IndexError(f"example {i} outside [0, {self.num_examples})")
    rng = np.random.default_rng([self.seed, 0, i])
    objects = sample_scene(rng)
    true = describe(objects, rng)
    if i not in self._noisy:
      return Example(i, objects, true, true, True)
    nrng = np.random.default_rng([self.seed, 2, i])
    if nrng.random() < 0.5:  # mismatched: a caption of another scene
      other = sample_scene(nrng)
      caption = describe(other, nrng)
    else:  # corrupted: words shuffled, one dropped
      words = true.split()
      words = [words[k] for k in nrng.permutation(len(words))]
      caption = " ".join(words[:-1] if len(words) > 2 else words)
    return Example(i, objects, caption, true, False)

  def __getitem__(self, i: int) -> tuple[Image.Image, Example]:
    ex = self.example(i)
    return render(ex.objects, self.image_size), ex

  def captions(self, i: int, n: int) -> list[str]:
    """n true descriptions of example i's scene (the first is its true_caption), like COCO's five
    captions per image; scenes with one kind of object have one description, repeated."""
    ex = self.example(i)
    rng = np.random.default_rng([self.seed, 5, i])
    return [ex.true_caption] + [describe(ex.objects, rng) for _ in range(n - 1)]

  def video(self, i: int, frames: int = 8) -> list[Image.Image]:
    """Scene i as a short clip: the objects drift together by up to a tenth of a cell (small motion
    that never changes what the caption says)."""
    rng = np.random.default_rng([self.seed, 7, i])
    direction = rng.uniform(-1.0, 1.0, 2)
    objects = self.example(i).objects
    return [render(objects, self.image_size, tuple(0.1 * direction * t / max(frames - 1, 1))) for t in range(frames)]

  # ---- VQA and NLVR2 from the same scenes ------------------------------------------------------
  def vqa(self, i: int) -> list[tuple[str, str]]:
    """(question, answer) pairs true of example i's scene."""
    objects = self.example(i).objects
    rng = np.random.default_rng([self.seed, 3, i])
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(list(COLORS)))
    n = sum(o.shape == shape for o in objects)
    qa = [
      (f"how many {shape}s are there?", str(n)),
      (f"is there a {color} {shape}?", "yes" if any((o.color, o.shape) == (color, shape) for o in objects) else "no"),
    ]
    unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
    if unique:
      o = unique[int(rng.integers(len(unique)))]
      qa.append((f"what color is the {o.shape}?", o.color))
    return qa

  def nlvr(self, i: int) -> tuple[int, int, str, bool]:
    """(left index, right index, statement, label) over examples i and a seeded partner."""
    rng = np.random.default_rng([self.seed, 4, i])
    j = int(rng.integers(self.num_examples))
    left, right = self.example(i).objects, self.example(j).objects
    kind = int(rng.integers(3))
    # half the statements name an object that is there (so both labels are common), half a random one
    about = left if kind != 1 else right
    if rng.random() < 0.5:
      o = about[int(rng.integers(len(about)))]
      color, shape = o.color, o.shape
    else:
      color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    has = lambda objs, c=None: any(o.shape == shape and (c is None or o.color == c) for o in objs)
    if kind == 0:
      return i, j, f"the left image contains a {color} {shape}", has(left, color)
    if kind == 1:
      return i, j, f"the right image contains a {color} {shape}", has(right, color)
    return i, j, f"both images contain a {shape}", has(left) and has(right)

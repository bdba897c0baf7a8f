"""The synthetic world: deterministic, every clean caption true of its image, noise fraction exact."""

import re

import numpy as np
import pytest

from blip_jax.data.synthetic import COLORS, SyntheticWorld

NUM = {"a": 1, "two": 2, "three": 3}


def caption_is_true(caption, objects):
  """An independent checker of the caption grammar against the scene metadata."""
  m = re.fullmatch(r"(two|three) (\w+) (\w+)s", caption)
  if m:
    n, color, shape = NUM[m.group(1)], m.group(2), m.group(3)
    return len(objects) == n and all((o.color, o.shape) == (color, shape) for o in objects)
  m = re.fullmatch(r"a (\w+) (\w+)", caption)
  if m:
    return len(objects) == 1 and (objects[0].color, objects[0].shape) == m.groups()
  m = re.fullmatch(r"a (\w+) (\w+) (left of|right of|above|below) a (\w+) (\w+)", caption)
  if not m:
    return False
  c1, s1, rel, c2, s2 = m.groups()
  holds = {
    "left of": lambda a, b: a.col < b.col,
    "right of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
  }[rel]
  return any(
    (a.color, a.shape) == (c1, s1) and (b.color, b.shape) == (c2, s2) and holds(a, b)
    for a in objects
    for b in objects
    if a is not b
  )


def test_same_seed_same_examples():
  a, b = SyntheticWorld(50, seed=3, noise=0.2), SyntheticWorld(50, seed=3, noise=0.2)
  for i in (0, 17, 49):
    (ia, ea), (ib, eb) = a[i], b[i]
    assert ea == eb and np.array_equal(np.asarray(ia), np.asarray(ib))
  assert SyntheticWorld(50, seed=4)[0][1] != a[0][1] or SyntheticWorld(50, seed=4)[1][1] != a[1][1]


def test_every_clean_caption_is_true_and_pixels_show_the_objects():
  world = SyntheticWorld(2000, seed=0, noise=0.3)
  for i in range(len(world)):
    ex = world.example(i)
    assert caption_is_true(ex.true_caption, ex.objects), ex
    if ex.clean:
      assert ex.caption == ex.true_caption
  img, ex = world[5]
  arr = np.asarray(img)
  for o in ex.objects:  # the centre pixel of each object's cell has its colour
    cy, cx = int((o.row + 0.55) * 32), int((o.col + 0.5) * 32)
    assert tuple(arr[cy, cx]) == COLORS[o.color], (o, tuple(arr[cy, cx]))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.37])
def test_noise_fraction_is_honoured(noise):
  world = SyntheticWorld(3000, seed=1, noise=noise)
  noisy = sum(not world.example(i).clean for i in range(len(world)))
  assert abs(noisy / len(world) - noise) <= 0.01
  changed = [world.example(i) for i in range(len(world)) if not world.example(i).clean]
  if changed:  # most replaced captions are actually wrong for their image
    wrong = np.mean([not caption_is_true(e.caption, e.objects) for e in changed])
    assert wrong > 0.8


def test_bad_noise_rejected():
  with pytest.raises(ValueError, match="noise=1.5"):
    SyntheticWorld(10, noise=1.5)


def test_vqa_answers_and_nlvr_labels_are_true():
  world = SyntheticWorld(500, seed=2)
  for i in range(len(world)):
    objects = world.example(i).objects
    for q, a in world.vqa(i):
      m = re.fullmatch(r"how many (\w+)s are there\?", q)
      if m:
        assert a == str(sum(o.shape == m.group(1) for o in objects))
      m = re.fullmatch(r"is there a (\w+) (\w+)\?", q)
      if m:
        assert a == ("yes" if any((o.color, o.shape) == m.groups() for o in objects) else "no")
      m = re.fullmatch(r"what color is the (\w+)\?", q)
      if m:
        (o,) = [o for o in objects if o.shape == m.group(1)]
        assert a == o.color
    left, right, sentence, label = world.nlvr(i)
    lo, ro = world.example(left).objects, world.example(right).objects
    m = re.fullmatch(r"the (left|right) image contains a (\w+) (\w+)", sentence)
    if m:
      objs = lo if m.group(1) == "left" else ro
      assert label == any((o.color, o.shape) == m.groups()[1:] for o in objs)
    else:
      shape = re.fullmatch(r"both images contain a (\w+)", sentence).group(1)
      assert label == (any(o.shape == shape for o in lo) and any(o.shape == shape for o in ro))
  labels = [world.nlvr(i)[3] for i in range(len(world))]
  assert 0.15 < np.mean(labels) < 0.85  # both labels occur


def test_writer_produces_blip_json_and_jpegs(tmp_path):
  import json

  from PIL import Image

  from blip_jax.data.write_synthetic import main

  main(["--out", str(tmp_path), "--num", "30", "--eval", "5", "--noise", "0.2", "--image-size", "48"])
  ann = lambda name: json.loads((tmp_path / "annotations" / f"{name}.json").read_text())
  pre = ann("pretrain")
  assert len(pre) == 30 and sum(not r["clean"] for r in pre) == 6 and set(pre[0]) == {"image", "caption", "clean"}
  ret = ann("retrieval_train")
  assert [r["image_id"] for r in ret] == list(range(30))
  ev = ann("retrieval_eval")
  assert len(ev) == 5 and isinstance(ev[0]["caption"], list)
  assert all(set(r) == {"image", "question", "answer", "dataset"} for r in ann("vqa_train"))
  assert all(len(r["images"]) == 2 and isinstance(r["label"], bool) for r in ann("nlvr_train"))
  img = Image.open(tmp_path / pre[3]["image"])
  assert img.size == (48, 48) and img.format == "JPEG"

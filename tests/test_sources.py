"""BLIP json sources load real files; bad input is located, skipped and counted exactly."""

import json

import pytest
from PIL import Image

from blip_jax.data.sources import BadExample, DataError, JsonSource, load_annotations
from blip_jax.data.write_synthetic import write


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  write(str(out), num=40, num_eval=6, noise=0.25, seed=0, image_size=48)
  return out


@pytest.mark.parametrize(
  "name, kind, n",
  [
    ("pretrain", "pretrain", 40),
    ("retrieval_train", "retrieval", 40),
    ("retrieval_eval", "eval", 6),
    ("nlvr_train", "nlvr", None),
    ("vqa_train", "vqa", None),
  ],
)
def test_every_format_loads(world, name, kind, n):
  src = JsonSource([str(world / "annotations" / f"{name}.json")], str(world), kind)
  if n is not None:
    assert len(src) == n
  ex = src[len(src) - 1]
  assert all(isinstance(im, Image.Image) and im.size == (48, 48) for im in ex["pil"])
  assert len(ex["pil"]) == (2 if kind == "nlvr" else 1)


def test_malformed_json_names_file_and_line(tmp_path):
  p = tmp_path / "bad.json"
  p.write_text('[\n {"image": "a.jpg", "caption": "x"},\n {"image": "b.jpg" "caption": "y"}\n]')
  with pytest.raises(DataError, match=r"bad.json: malformed json at line 3"):
    load_annotations(str(p), "pretrain")


def test_malformed_record_located_or_skipped_and_counted(tmp_path):
  p = tmp_path / "recs.json"
  p.write_text(
    json.dumps(
      [
        {"image": "a.jpg", "caption": "x"},
        {"image": "b.jpg"},
        {"image": 3, "caption": "z"},
        {"image": "c.jpg", "caption": "w"},
      ]
    )
  )
  with pytest.raises(DataError, match=r"recs.json: record 1: missing key 'caption'"):
    load_annotations(str(p), "pretrain")
  recs, skipped = load_annotations(str(p), "pretrain", skip_bad_records=True)
  assert [r["image"] for r in recs] == ["a.jpg", "c.jpg"] and skipped == 2


def test_corrupt_truncated_and_missing_images_skipped_exactly(world, tmp_path):
  ann = json.loads((world / "annotations" / "pretrain.json").read_text())[:12]
  root = tmp_path
  (root / "images").mkdir()
  for r in ann:
    (root / r["image"]).write_bytes((world / r["image"]).read_bytes())
  data = (root / ann[2]["image"]).read_bytes()
  (root / ann[2]["image"]).write_bytes(data[: len(data) // 3])  # truncated JPEG
  (root / ann[5]["image"]).write_bytes(b"not an image at all")  # corrupt
  (root / ann[9]["image"]).unlink()  # missing
  (root / "ann.json").write_text(json.dumps(ann))
  src = JsonSource([str(root / "ann.json")], str(root), "pretrain")
  kept, errors = [], []
  for i in range(len(src)):
    try:
      src[i]
      kept.append(i)
    except BadExample as e:
      errors.append(str(e))
  assert kept == [i for i in range(12) if i not in (2, 5, 9)]
  assert len(errors) == 3
  assert ann[9]["image"] in " ".join(errors) and "not found" in " ".join(errors)

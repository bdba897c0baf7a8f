"""grain pipelines over real files: every json format and a TFDS array_record dataset into correctly
shaped, normalised batches with the right token ids; mixtures; exact resume (threads and 2 worker
processes); per-process sharding; bad images skipped exactly; global jax.Arrays."""

import json
import os

import jax
import numpy as np
import pytest

from blip_jax.data.loader import Loader, LoaderConfig, element_stream, to_global_arrays
from blip_jax.data.preprocess import Preprocess
from blip_jax.data.sources import DataError, load_image, make_source
from blip_jax.data.text import pre_caption, pre_question
from blip_jax.data.tokenizer import train_sentencepiece
from blip_jax.data.transforms import eval_transform
from blip_jax.data.write_synthetic import write
from blip_jax.train.sharding import batch_sharding, make_mesh

SIZE = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  write(str(out), num=40, num_eval=6, noise=0.25, seed=0, image_size=48)
  return out


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
  texts = []
  for name in ("pretrain", "vqa_train", "nlvr_train"):
    for r in json.loads((world / "annotations" / f"{name}.json").read_text()):
      texts.append(r.get("caption") or r.get("question") or r.get("sentence"))
  return train_sentencepiece(texts, str(tmp_path_factory.mktemp("tok") / "sp.model"), vocab_size=80)


def _json(world, name, task):
  return make_source(
    {"type": "json", "ann": [str(world / "annotations" / f"{name}.json")], "image_root": str(world)}, task
  )


def _loader(sources, task, tok, batch=4, weights=None, train=False, **kw):
  cfg = LoaderConfig(batch_size=batch, shuffle=kw.pop("shuffle", False), **kw)
  return Loader(sources, weights, Preprocess(task, tok, SIZE, train=train), cfg)


@pytest.mark.parametrize(
  "name, task",
  [
    ("pretrain", "pretrain"),
    ("retrieval_train", "retrieval"),
    ("retrieval_eval", "eval"),
    ("vqa_train", "vqa"),
    ("nlvr_train", "nlvr"),
  ],
)
def test_every_json_format_to_batches(world, tok, name, task):
  src = _json(world, name, task)
  batch = next(_loader([src], task, tok))
  recs = src.records[:4]  # shuffle off: the first batch is records 0..3
  want_images = np.stack(
    [np.stack([eval_transform(load_image(p), SIZE) for p in src.image_paths(i)]) for i in range(4)]
  )
  got = batch["images"] if task == "nlvr" else batch["images"][:, None]
  np.testing.assert_array_equal(got, want_images)
  assert got.dtype == np.float32 and -2.5 < got.min() < 0 < got.max() < 2.5  # normalised, not [0, 255]
  if task == "eval":  # every reference caption rides along, for the evaluators
    assert set(batch) == {"images", "idx", "captions", "num_captions", "image_id"}
    got_caps = [list(c[:k]) for c, k in zip(batch["captions"].tolist(), batch["num_captions"].tolist())]
    assert got_caps == [r["caption"] for r in recs]
    return
  texts = {
    "pretrain": lambda r: pre_caption(r["caption"], 30),
    "retrieval": lambda r: pre_caption(r["caption"], 30),
    "vqa": lambda r: pre_question(r["question"]),
    "nlvr": lambda r: pre_caption(r["sentence"], 40),
  }[task]
  ids, mask = tok.encode([texts(r) for r in recs], 30)
  np.testing.assert_array_equal(batch["ids"], ids)
  np.testing.assert_array_equal(batch["mask"], mask)
  assert (batch["ids"][:, 0] == tok.special.cls).all() and batch["ids"].shape == (4, 30)
  if task == "retrieval":
    np.testing.assert_array_equal(batch["idx"], [r["image_id"] for r in recs])
  if task == "vqa":
    a_ids, _ = tok.encode([r["answer"][0] for r in recs], 8)
    np.testing.assert_array_equal(batch["answer_ids"][:, 0], a_ids)
    np.testing.assert_allclose(batch["answer_weight"][:, 0], 1.0)
    assert (batch["answer_weight"][:, 1:] == 0).all()
  if task == "nlvr":
    np.testing.assert_array_equal(batch["label"], [int(r["label"]) for r in recs])


def test_tfds_array_record_source(world, tok, tmp_path):
  """The synthetic world written through the tfds builder (array_record) reads back through
  tfds.data_source into the same batches as the json it came from."""
  from blip_jax.data.tfds_source import build_from_json

  ann = str(world / "annotations" / "retrieval_train.json")
  directory = build_from_json(ann, str(world), str(tmp_path / "tfds"))
  assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(directory))
  by_dir = make_source({"type": "tfds", "directory": directory}, "retrieval")
  by_name = make_source({"type": "tfds", "name": "blip_captions", "data_dir": str(tmp_path / "tfds")}, "retrieval")
  assert len(by_dir) == len(by_name) == 40
  want = next(_loader([_json(world, "retrieval_train", "retrieval")], "retrieval", tok, batch=40))
  for src in (by_dir, by_name):  # tfds stores records in its own (key-hashed) order: compare by image id
    got = next(_loader([src], "retrieval", tok, batch=40))
    order = np.argsort(got["idx"])
    np.testing.assert_array_equal(got["idx"][order], want["idx"])
    for k in ("ids", "mask"):
      np.testing.assert_array_equal(got[k][order], want[k])
    np.testing.assert_allclose(got["images"][order], want["images"], atol=1e-6)


def test_tfds_feature_mapping_errors(world, tmp_path):
  from blip_jax.data.tfds_source import build_from_json

  directory = build_from_json(str(world / "annotations" / "retrieval_train.json"), str(world), str(tmp_path))
  bad = make_source(
    {"type": "tfds", "directory": directory, "mapping": {"image": "image", "caption": "text"}}, "retrieval"
  )
  with pytest.raises(DataError, match=r"record 0: feature 'text' not in the record"):
    bad[0]
  with pytest.raises(DataError, match=r"cannot open"):
    make_source({"type": "tfds", "name": "coco_captions", "data_dir": str(tmp_path / "none")}, "retrieval")


def test_mixture_weights_and_epochs():
  stream = element_stream([50, 30], [0.75, 0.25], seed=3)
  els = np.stack([stream[i] for i in range(4000)])
  frac = (els[:, 0] == 0).mean()
  assert abs(frac - 0.75) < 0.01
  first = els[els[:, 0] == 1][:60]  # source 1: each epoch is a fresh permutation of its 30 examples
  assert sorted(first[:30, 1]) == list(range(30)) and sorted(first[30:, 1]) == list(range(30))
  assert (first[:30, 2] == 0).all() and (first[30:, 2] == 1).all()
  assert not np.array_equal(first[:30, 1], first[30:, 1])


def test_train_augmentation_is_a_function_of_seed_index_epoch(world, tok):
  src = [_json(world, "pretrain", "pretrain")]
  a = next(_loader(src, "pretrain", tok, train=True, threads=1))
  b = next(_loader(src, "pretrain", tok, train=True, threads=4))
  np.testing.assert_array_equal(a["images"], b["images"])
  c = next(_loader(src, "pretrain", tok, train=True, seed=1))
  assert not np.array_equal(a["images"], c["images"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_next_batches(world, tok, workers):
  src = [
    _json(world, "pretrain", "pretrain"),
    make_source({"type": "synthetic", "num": 30, "image_size": 40}, "pretrain"),
  ]
  kw = dict(weights=[0.6, 0.4], train=True, shuffle=True, workers=workers, batch=4)
  run = _loader(src, "pretrain", tok, **kw)
  for _ in range(3):  # k = 3 batches, then the state
    next(run)
  state = json.loads(json.dumps(run.state()))  # it must survive serialisation
  rest = [next(run) for _ in range(4)]
  resumed = _loader(src, "pretrain", tok, **kw)
  resumed.restore(state)
  for want in rest:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_shards_are_disjoint_and_cover_the_stream(world, tok):
  src = [make_source({"type": "synthetic", "num": 24, "image_size": 40}, "pretrain")]
  cfg = lambda: LoaderConfig(batch_size=4, shuffle=True, num_epochs=1)
  pp = Preprocess("pretrain", tok, SIZE)
  single = np.concatenate([b["idx"] for b in Loader(src, None, pp, cfg())])
  shards = [np.concatenate([b["idx"] for b in Loader(src, None, pp, cfg(), p, 2)]) for p in range(2)]
  assert sorted(single) == list(range(24))
  assert not set(shards[0]) & set(shards[1]) and sorted(np.concatenate(shards)) == list(range(24))


def _damaged(world, tmp_path, n=20, bad=(2, 5, 9)):
  ann = json.loads((world / "annotations" / "retrieval_train.json").read_text())[:n]
  (tmp_path / "images").mkdir()
  for r in ann:
    (tmp_path / r["image"]).write_bytes((world / r["image"]).read_bytes())
  data = (tmp_path / ann[bad[0]]["image"]).read_bytes()
  (tmp_path / ann[bad[0]]["image"]).write_bytes(data[: len(data) // 3])  # truncated
  (tmp_path / ann[bad[1]]["image"]).write_bytes(b"not an image")  # corrupt
  (tmp_path / ann[bad[2]]["image"]).unlink()  # missing
  (tmp_path / "ann.json").write_text(json.dumps(ann))
  return make_source(
    {"type": "json", "ann": [str(tmp_path / "ann.json")], "image_root": str(tmp_path)}, "retrieval"
  ), ann


def test_bad_images_skipped_exactly_and_counted(world, tok, tmp_path, caplog):
  src, ann = _damaged(world, tmp_path)
  loader = _loader([src], "retrieval", tok, batch=1, num_epochs=1, max_skip_fraction=0.5, min_seen=1)
  seen = [int(b["idx"][0]) for b in loader]
  assert seen == [r["image_id"] for i, r in enumerate(ann) if i not in (2, 5, 9)]
  assert loader.skipped == 3 and loader.seen == 20
  logged = caplog.text
  assert all(ann[i]["image"] in logged for i in (2, 5, 9))


def test_skip_threshold_stops_the_pipeline(world, tok, tmp_path):
  src, _ = _damaged(world, tmp_path)
  loader = _loader([src], "retrieval", tok, batch=2, max_skip_fraction=0.1, min_seen=5)
  with pytest.raises(DataError, match=r"examples skipped .* max_skip_fraction 10.0%"):
    for _ in range(20):
      next(loader)


def test_global_batch_is_sharded(world, tok, devices):
  mesh = make_mesh((4, 2, 1))
  batch = next(_loader([_json(world, "pretrain", "pretrain")], "pretrain", tok, batch=8))
  arrays = to_global_arrays(batch, batch_sharding(mesh))
  assert arrays["images"].shape == (8, SIZE, SIZE, 3)
  assert len(arrays["images"].addressable_shards) == 8
  assert arrays["images"].addressable_shards[0].data.shape == (1, SIZE, SIZE, 3)
  np.testing.assert_array_equal(jax.device_get(arrays["ids"]), batch["ids"])

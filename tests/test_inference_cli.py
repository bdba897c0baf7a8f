"""The inference CLIs on the smoke baseline's model: features resumes after a kill to the same files,
search's top hit is the evaluator's ranking, score / classify print their tables, and bad inputs end
in one error line with exit status 1."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.trainer_runs import ROOT

ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def _cli(module, *args, wait=True):
  cmd = [sys.executable, "-m", f"blip_jax.{module}", *map(str, args)]
  p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return p
  out, err = p.communicate(timeout=600)
  return p.returncode, out, err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  from blip_jax.data.synthetic import SyntheticWorld

  d = tmp_path_factory.mktemp("scenes")
  world = SyntheticWorld(100, image_size=32)
  captions = []
  for i in range(64, 100):  # held out from the smoke run's 64 training scenes
    img, ex = world[i]
    img.save(d / f"{i:03d}.png")
    captions.append(ex.true_caption)
  (d / "captions.json").write_text(json.dumps(captions))
  return d, captions


def test_features_killed_and_rerun_equals_an_uninterrupted_run(baseline, scenes, tmp_path):
  model, (d, _) = baseline[0] / "model", scenes
  args = ["--checkpoint", model, "--images", d, "--texts", d / "captions.json", "--chunk", "4"]
  rc, out, err = _cli("features", *args, "--out", tmp_path / "full")
  assert rc == 0, err
  p = _cli("features", *args, "--out", tmp_path / "resumed", wait=False)
  t0 = time.time()
  while not (tmp_path / "resumed" / "parts" / "images_00002.npz").exists() and time.time() - t0 < 300:
    time.sleep(0.02)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (tmp_path / "resumed" / "index.json").exists()  # killed mid-way
  rc, out, err = _cli("features", *args, "--out", tmp_path / "resumed")
  assert rc == 0, err
  for name in ("image_features.npy", "text_features.npy"):
    np.testing.assert_array_equal(np.load(tmp_path / "full" / name), np.load(tmp_path / "resumed" / name))
  for name in ("images.json", "texts.json"):
    assert json.loads((tmp_path / "full" / name).read_text()) == json.loads((tmp_path / "resumed" / name).read_text())
  assert json.loads((tmp_path / "full" / "index.json").read_text())["images"] == 36


def test_search_top_hit_is_the_evaluators_ranking(baseline, scenes, tmp_path):
  import jax

  import blip_jax
  from blip_jax.evaluate.eval_set import EvalSet
  from blip_jax.evaluate.retrieval import Retrieval
  from blip_jax.search import search
  from blip_jax.train import build, inputs
  from blip_jax.train import sharding as S
  from experiments import demo

  d, captions = scenes
  rc, _, err = _cli("features", "--checkpoint", baseline[0] / "model", "--images", d, "--out", tmp_path / "idx")
  assert rc == 0, err
  m = blip_jax.load(str(baseline[0] / "model"))
  feats, paths = (
    np.load(tmp_path / "idx" / "image_features.npy"),
    json.loads((tmp_path / "idx" / "images.json").read_text()),
  )
  cfg = demo.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path))
  exp = build.experiment(cfg, 8, 1, tok)
  mesh = S.make_mesh((8, 1, 1))
  ev = Retrieval(exp, tok, mesh, data=EvalSet(m.preprocess(paths), [[c] for c in captions], np.arange(36), 0))
  with jax.set_mesh(mesh):
    _, image_feat, text_feat = ev.features(m.params)
  want = np.argmax(text_feat @ image_feat.T, axis=1)
  for t, caption in enumerate(captions):
    assert search(m, feats, paths, caption, 1)[0][0] == paths[want[t]]
  rc, out, err = _cli("search", "--index", tmp_path / "idx", captions[0], "--top", "2")
  assert rc == 0 and out.splitlines()[1].split("\t")[2] == paths[want[0]], err


def test_score_and_classify_print_tables_and_bad_inputs_fail_cleanly(baseline, scenes, tmp_path):
  model, (d, _) = baseline[0] / "model", scenes
  rc, out, err = _cli("score", "--checkpoint", model, d / "064.png", "a red circle", "two blue squares")
  assert rc == 0, err
  rows = [line.split("\t") for line in out.splitlines()]
  assert len(rows) == 2 and all(0 <= float(r[0]) <= 1 and -1 <= float(r[1]) <= 1 for r in rows)
  rc, out, err = _cli("classify", "--checkpoint", model, "--labels", "red,green,blue", d / "064.png", d / "065.png")
  assert rc == 0 and len(out.splitlines()) == 2, err
  (tmp_path / "broken.png").write_bytes(b"nope")
  for args, message in (
    (("score", "--checkpoint", model, tmp_path / "broken.png", "a dog"), "broken.png"),
    (("score", "--checkpoint", model, d / "064.png", " "), "is empty"),
    (("classify", "--checkpoint", model, "--labels", "red", d / "064.png"), "at least two"),
    (("search", "--index", tmp_path, "a dog"), "not a features index"),
    (("features", "--checkpoint", tmp_path / "none", "--texts", d / "captions.json", "--out", tmp_path / "o"), "none"),
  ):
    rc, out, err = _cli(*args)
    assert rc == 1 and message in err and "Traceback" not in err, (args, err)

"""CapFilt on the smoke baseline's model (captioner = its decoder, filter = its ITM head): every web
text and synthetic caption scored and kept by threshold, human sources untouched, the summary's
counts and ground-truth figures consistent with the shards, and a killed job rerun ending with the
same output as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.trainer_runs import ROOT

CONFIG = """
from experiments import demo


def get_config(arg=""):
  c = demo.get_config("smoke")
  c.data.sources = (
    dict(type="synthetic", num=20, image_size=32, noise=0.4),
    dict(type="synthetic", num=6, offset=64, image_size=32, human=True),
  )
  return c
"""


def _capfilt(model, config, out, *extra, wait=True):
  cmd = [sys.executable, "-m", "blip_jax.capfilt", "--config", str(config), "--captioner", str(model)]
  cmd += ["--filter", str(model), "--out", str(out), "--shard_size", "4", "--batch", "4", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return p
  out_, err = p.communicate(timeout=600)
  return p.returncode, out_, err


@pytest.fixture(scope="module")
def job(baseline, tmp_path_factory):
  d = tmp_path_factory.mktemp("capfilt")
  (d / "config.py").write_text(CONFIG)
  rc, out, err = _capfilt(baseline[0] / "model", d / "config.py", d / "full", "--threshold", "0.3")
  assert rc == 0, err
  return d, json.loads(out[out.index("{") :])


def _shards(out):
  return {
    f: json.loads((out / "shards" / f).read_text()) for f in sorted(os.listdir(out / "shards")) if f.endswith(".json")
  }


def test_every_text_scored_human_untouched_and_summary_consistent(job):
  d, summary = job
  shards = _shards(d / "full")
  kept = [r for name, rs in shards.items() if not name.endswith(".stats.json") for r in rs]
  o = summary["origins"]
  assert o["web"]["kept"] + o["web"]["dropped"] == 20 and o["synthetic"]["kept"] + o["synthetic"]["dropped"] == 20
  assert o["human"] == {"kept": 6, "dropped": 0}
  assert sum(r["origin"] == "web" for r in kept) == o["web"]["kept"]
  assert all(r["itm"] >= 0.3 for r in kept if r["origin"] != "human")
  assert all(os.path.isabs(r["image"]) and os.path.exists(r["image"]) for r in kept)  # synthetic images written
  t = summary["web_truth"]  # the world's clean flags: 8 of the 20 web captions are noisy
  assert t["kept_noisy"] + t["dropped_noisy"] == 8 and t["kept_clean"] + t["dropped_clean"] == 12
  assert 0 <= t["kept_precision"] <= 1 and 0 <= t["noisy_recall"] <= 1


@pytest.mark.slow
def test_killed_job_rerun_equals_an_uninterrupted_one(job, baseline):
  d, _ = job
  p = _capfilt(baseline[0] / "model", d / "config.py", d / "resumed", "--threshold", "0.3", wait=False)
  t0 = time.time()
  while not (d / "resumed" / "shards" / "source0_000001.json").exists() and time.time() - t0 < 300:
    time.sleep(0.02)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (d / "resumed" / "summary.json").exists()
  rc, _, err = _capfilt(baseline[0] / "model", d / "config.py", d / "resumed", "--threshold", "0.3")
  assert rc == 0, err
  full, resumed = _shards(d / "full"), _shards(d / "resumed")
  assert full.keys() == resumed.keys()
  for name in full:
    a, b = full[name], resumed[name]
    if not name.endswith(".stats.json"):  # image paths differ by output directory only
      a = [dict(r, image=os.path.basename(r["image"])) for r in a]
      b = [dict(r, image=os.path.basename(r["image"])) for r in b]
    assert a == b, name
  assert json.loads((d / "full" / "summary.json").read_text()) == json.loads(
    (d / "resumed" / "summary.json").read_text()
  )

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


def _shards(out, kind="shards"):
  return {f: json.loads((out / kind / f).read_text()) for f in sorted(os.listdir(out / kind)) if f.endswith(".json")}


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


def test_scores_reselect_the_papers_rows_and_histograms_count_every_text(job):
  from blip_jax import capfilt

  d, summary = job
  out = str(d / "full")
  kept = [r for f in capfilt.shards(out) for r in json.load(open(f))]
  key = lambda r: (r["image"], r["caption"], r["origin"])
  # re-selecting at the job's own threshold (the default) reproduces its output exactly
  assert sorted(map(key, capfilt.select(out))) == sorted(map(key, kept))
  assert len(capfilt.select(out, threshold=0.0)) == 20 + 20 + 6
  c_only = capfilt.select(out, web="all", synthetic="all")
  f_only = capfilt.select(out, web="filtered", synthetic="none", threshold=0.3)
  assert len(c_only) == 20 + 20 + 6  # every web text, every synthetic caption, the human pairs
  assert {r["origin"] for r in f_only} <= {"web", "human"}
  assert sum(r["origin"] == "web" for r in f_only) == summary["origins"]["web"]["kept"]
  h = summary["itm_histogram"]
  assert len(h["bins"]) == capfilt.HISTOGRAM_BINS + 1 and sum(h["web"]) == sum(h["synthetic"]) == 20
  assert sum(h["web_clean"]) == 12 and sum(h["web_noisy"]) == 8
  # the sweep's row at the 0.3 edge counts what the job kept at 0.3
  row = next(r for r in summary["threshold_sweep"] if abs(r["threshold"] - 0.3) < 1e-9)
  assert row["kept_web"] == summary["origins"]["web"]["kept"]
  with pytest.raises(ValueError, match="web='some'"):
    capfilt.select(out, web="some")


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
  for kind in ("shards", "scores"):
    full, resumed = _shards(d / "full", kind), _shards(d / "resumed", kind)
    assert full.keys() == resumed.keys()
    for name in full:
      a, b = full[name], resumed[name]
      if not name.endswith(".stats.json"):  # image paths differ by output directory only
        a = [dict(r, image=os.path.basename(r["image"])) for r in a]
        b = [dict(r, image=os.path.basename(r["image"])) for r in b]
      assert a == b, (kind, name)
  assert json.loads((d / "full" / "summary.json").read_text()) == json.loads(
    (d / "resumed" / "summary.json").read_text()
  )


def test_dry_run_compiles_both_functions_and_reports_memory():
  import jax

  from blip_jax.capfilt_compile import capfilt_flops, compile_capfilt, format_report
  from blip_jax.models import tiny

  cap, filt = tiny("caption"), tiny("retrieval")
  r = compile_capfilt(cap, filt, jax.devices()[:2], batch=2, max_length=8, min_length=2, prompt_length=2)
  assert r["devices"] == 2 and r["batch_per_device"] == 2
  for name in ("caption", "filter"):
    assert r[name]["argument_bytes"] > 0 and r[name]["total_bytes"] >= r[name]["temp_bytes"]
  # FLOPs scale with images; the report prints per-chip memory for both functions
  assert capfilt_flops(cap, filt, 10, 8, 1) == pytest.approx(10 * r["flops_per_image"])
  text = format_report(r)
  assert "caption  per chip" in text and "filter   per chip" in text


def test_histogram_png_draws_both_series(tmp_path):
  import numpy as np
  from PIL import Image

  from experiments.capfilt_histogram import SERIES, plot

  hist = {"bins": [i / 20 for i in range(21)], "web_clean": [0] * 15 + [5] * 5, "web_noisy": [9] * 5 + [0] * 15}
  plot(hist, str(tmp_path / "h.png"), threshold=0.42)
  img = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
  for _, _, colour in SERIES:  # both series' bars are drawn
    assert (img == colour).all(-1).sum() > 500
  green = np.nonzero((img == SERIES[0][2]).all(-1))[1]
  red = np.nonzero((img == SERIES[1][2]).all(-1))[1]
  assert np.median(red) < np.median(green)  # noisy mass at low probability, clean at high
  with pytest.raises(ValueError, match="clean"):
    plot({"bins": hist["bins"], "web": [1] * 20}, str(tmp_path / "x.png"))


def test_demo_tables_render_every_row():
  from experiments.capfilt_demo import markdown

  row = {"zero_shot_i2t_r1": 13.3, "zero_shot_t2i_r1": 19.9, "caption_CIDEr": 3.0}
  filt = {"threshold": 0.3, "web_kept": 2000, "synthetic_kept": 1500, "kept_precision": 93.0, "noisy_recall": 91.0}
  out = {
    "filter": filt,
    "filter_paper": filt,
    "table1": {"A (noisy web + human)": row, "C+F": dict(row, texts=5000)},
    "table3": {"all": dict(row, params=1234)},
    "table4": {"shared": dict(row, **filt)},
  }
  text = markdown(out)
  assert "| C+F | 13.3 | 19.9 | 3.00 |" in text and "| all | 13.3 | 19.9 | 3.00 | 1,234 |" in text
  assert "| shared | 13.3 | 19.9 | 3.00 | 93.0 | 91.0 |" in text and "Table 2" not in text

"""Fine-tuning through the one trainer: retrieval and captioning runs from the smoke baseline's model
(CLI, one device), their evaluators in the loop, the best model kept, the standalone evaluator, and
the fine-tuned models exported to Hugging Face with outputs equal to ours."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_runs import ROOT, STEPS, cli, losses

CONFIGS = {"retrieval": "experiments/retrieval_coco_base.py:smoke", "caption": "experiments/caption_coco_base.py:smoke"}


class _Runs(dict):
  """task -> (workdir, log) of a 10-step fine-tune of the baseline's pretrained model, run on first use
  (the retrieval run only serves slow tests)."""

  def __init__(self, baseline, factory):
    super().__init__()
    self.baseline, self.factory = baseline, factory

  def __missing__(self, task):
    wd = self.factory.mktemp(task)
    rc, log = cli(wd, f"--config.init_from={self.baseline[0] / 'model'}", config=CONFIGS[task])
    assert rc == 0, log
    self[task] = (wd, log)
    return self[task]


@pytest.fixture(scope="module")
def finetuned(baseline, tmp_path_factory):
  return _Runs(baseline, tmp_path_factory)


def _eval_records(wd):
  with open(wd / "metrics.jsonl") as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"]


@pytest.mark.slow
def test_retrieval_finetune_losses_eval_and_best_model(finetuned):
  wd, log = finetuned["retrieval"]
  assert "narrowed the 'pretrain' checkpoint to task 'retrieval'" in log
  assert sorted(losses(wd)) == list(range(1, STEPS + 1))
  assert set(losses(wd)[STEPS]) == {"loss", "loss_itc", "loss_itm"}  # no LM in retrieval fine-tuning
  (final,) = _eval_records(wd)
  assert final["images"] == 16 and final["texts"] == 80  # 5 captions per held-out image
  for k in ("txt_r1", "img_r10", "r_mean", "itc_r_mean"):
    assert 0 <= final[k] <= 100
  best = json.load(open(wd / "best" / "best.json"))
  assert best["metric"] == "r_mean" and best["step"] == STEPS and best["value"] == final["r_mean"]
  assert os.path.exists(wd / "best" / "model.json") and os.path.exists(wd / "best" / "tokenizer.model")


def test_caption_finetune_result_file_and_best_model(finetuned):
  wd, log = finetuned["caption"]
  assert set(losses(wd)[STEPS]) == {"loss", "loss_lm"}
  (final,) = _eval_records(wd)
  assert final["cider_bleu4"] == pytest.approx(final["CIDEr"] + final["Bleu_4"])
  results = json.load(open(wd / "eval" / f"captions_step_{STEPS}.json"))
  assert [r["image_id"] for r in results] == list(range(64, 80))  # the held-out scenes' ids
  assert all(isinstance(r["caption"], str) for r in results)
  assert json.load(open(wd / "best" / "best.json"))["metric"] == "cider_bleu4"


def test_standalone_evaluator_equals_the_in_loop_one(finetuned, tmp_path):
  wd, _ = finetuned["caption"]
  cmd = [sys.executable, "-m", "blip_jax.evaluate", "--config", CONFIGS["caption"], "--checkpoint", str(wd / "best")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  p = subprocess.run(cmd + ["--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr
  got = json.load(open(tmp_path / "metrics.json"))
  (final,) = _eval_records(wd)
  for k in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "cider_bleu4"):
    assert got[k] == pytest.approx(final[k], abs=1e-9), k
  assert (tmp_path / "captions_step_final.json").exists()


def test_standalone_evaluator_names_a_missing_checkpoint(tmp_path):
  cmd = [sys.executable, "-m", "blip_jax.evaluate", "--config", CONFIGS["caption"], "--checkpoint", str(tmp_path / "x")]
  p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True, timeout=300)
  assert p.returncode == 1 and str(tmp_path / "x") in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("task", [pytest.param("retrieval", marks=pytest.mark.slow), "caption"])
def test_finetuned_models_export_to_hf_with_equal_outputs(finetuned, task, tmp_path):
  import jax.numpy as jnp
  import torch
  import transformers

  from blip_jax import interop
  from blip_jax.models import Blip
  from tests.hf_reference import nchw

  ckpt = interop.load(str(finetuned[task][0] / "model"), task="itm" if task == "retrieval" else "caption")
  interop.save(ckpt, str(tmp_path / "hf"), "hf")
  cls = transformers.BlipForImageTextRetrieval if task == "retrieval" else transformers.BlipForConditionalGeneration
  model, info = cls.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model.eval()
  c = ckpt.config
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, c.vision.image_size, c.vision.image_size, 3)).astype(np.float32)
  ids = rng.integers(5, c.text.vocab_size, (2, 9))
  ids[:, 0], ids[0, 8], ids[1, 5] = c.text.cls_token_id, c.text.sep_token_id, c.text.sep_token_id
  mask = (np.arange(9)[None] <= np.array([[8], [5]])).astype(np.int64)
  apply = lambda method, *a: np.asarray(Blip(c).apply({"params": ckpt.params}, *a, method=method))
  img = apply(Blip.encode_image, jnp.asarray(images))
  with torch.no_grad():
    if task == "retrieval":
      enc = ids.copy()
      enc[:, 0] = c.text.enc_token_id
      out = model(input_ids=torch.from_numpy(enc), pixel_values=nchw(images), attention_mask=torch.from_numpy(mask))
      ours = apply(Blip.itm_logits, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
      theirs = out.itm_score.numpy()
    else:
      dec = ids.copy()
      dec[:, 0] = c.text.bos_token_id
      out = model(pixel_values=nchw(images), input_ids=torch.from_numpy(dec), attention_mask=torch.from_numpy(mask))
      ours = apply(Blip.decode, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(img))
      theirs = out.logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "caption"])
def test_sigkill_mid_finetune_then_resume_is_bitwise_identical(finetuned, baseline, task, tmp_path):
  import signal
  import time

  from tests.trainer_runs import wait_for_step

  args = (f"--config.init_from={baseline[0] / 'model'}",)
  proc = cli(tmp_path, *args, wait=False, config=CONFIGS[task])
  wait_for_step(proc, tmp_path, 4)
  t0 = time.time()
  while not any(d.isdigit() for d in os.listdir(tmp_path / "checkpoints")) and time.time() - t0 < 120:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(losses(tmp_path)) < STEPS
  rc, out = cli(tmp_path, *args, config=CONFIGS[task])
  assert rc == 0 and "resumed from" in out, out
  assert losses(tmp_path) == losses(finetuned[task][0])  # every step, bitwise

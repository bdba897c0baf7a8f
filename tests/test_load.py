"""interop.load: every format through one function, task narrowing and pos-embed resize on the params
tree (torch-bicubic exact), the trainer's init_from path, and clear errors instead of exits."""

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blip_jax import interop
from blip_jax.models import init_params, param_shapes, tiny
from blip_jax.models.momentum import momentum_view

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))


def _torch_bicubic(pe: np.ndarray, tokens: int) -> np.ndarray:
  """Independent reference: F.interpolate(bicubic, align_corners=False) on the patch grid."""
  g, go = int(round((pe.shape[1] - 1) ** 0.5)), int(round((tokens - 1) ** 0.5))
  grid = torch.from_numpy(pe[:, 1:].copy()).reshape(1, g, g, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(go, go), mode="bicubic", align_corners=False)
  return np.concatenate([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, go * go, -1).numpy()], axis=1)


def _pretrain_pth(directory, vocab_size: int = 100):
  """A tiny official-format pretraining checkpoint (momentum copies and queues included), written by
  our Salesforce export, with the sizes of the demo's smoke config (widths 32, 32 px)."""
  config = tiny("pretrain", image_size=32, vision_width=32, text_width=32, vocab_size=vocab_size)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
  queues = {"image": np.zeros((16, 16), np.float32), "text": np.zeros((16, 16), np.float32), "ptr": 0}
  path = str(directory / "pretrain.pth")
  interop.save(interop.Checkpoint(config, params, momentum_view(params), queues), path, "salesforce")
  return path, params


@pytest.fixture(scope="module")
def pretrain_pth(tmp_path_factory):
  return _pretrain_pth(tmp_path_factory.mktemp("sf"))


def _convert(*args):
  return subprocess.run(
    [sys.executable, "-m", "blip_jax.convert", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )


def test_converted_without_queues_loads_at_another_size(pretrain_pth, tmp_path):
  """A checkpoint converted with --ignore queues (no queues stored) resizes on the params tree; the new
  pos_embed and its momentum copy equal torch's bicubic resize, everything else is untouched."""
  path, params = pretrain_pth
  r = _convert(path, str(tmp_path / "ckpt"), "--ignore", "queues")
  assert r.returncode == 0, r.stderr
  ckpt = interop.load(str(tmp_path / "ckpt"), task="pretrain", image_size=48)
  assert ckpt.queues is None and ckpt.config.vision.image_size == 48
  want = _torch_bicubic(params["visual_encoder"]["pos_embed"], 37)
  got = ckpt.params["visual_encoder"]["pos_embed"]
  assert got.shape == (1, 37, 32)
  assert np.abs(got - want).max() <= 1e-6
  np.testing.assert_array_equal(ckpt.momentum_params["visual_encoder"]["pos_embed"], got)
  np.testing.assert_array_equal(
    ckpt.params["text"]["embeddings"]["word_embeddings"]["embedding"],
    params["text"]["embeddings"]["word_embeddings"]["embedding"],
  )
  assert any("resized 17 -> 37" in n for n in ckpt.notes)


def test_trainer_init_from_converted_checkpoint(pretrain_pth, tmp_path):
  """config.init_from at another image size (the smoke config runs at 32 px; the checkpoint is 48)."""
  from blip_jax.tasks.pretrain import init_state
  from blip_jax.train import build, inputs
  from blip_jax.train.trainer import _init_from
  from experiments import demo

  cfg = demo.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path / "wd"), write=False)
  path, params = _pretrain_pth(tmp_path, tok.vocab_size)
  assert _convert(path, str(tmp_path / "ckpt48"), "--ignore", "queues", "--image-size", "48").returncode == 0
  exp = build.experiment(cfg, 8, tokenizer=tok)
  state = init_state(exp.model, exp.objective, exp.optimizer, jax.random.key(1))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  state, notes = _init_from(str(tmp_path / "ckpt48"), exp, state, shardings)
  back = _torch_bicubic(_torch_bicubic(params["visual_encoder"]["pos_embed"], 37), 17)
  assert np.abs(np.asarray(state["params"]["visual_encoder"]["pos_embed"]) - back).max() <= 1e-6
  np.testing.assert_array_equal(
    state["momentum"]["visual_encoder"]["pos_embed"], state["params"]["visual_encoder"]["pos_embed"]
  )
  assert any("48 -> 32 px" in n for n in notes)


def test_pretrain_narrows_to_every_subtask(pretrain_pth):
  path, params = pretrain_pth
  for task in ("caption", "itm", "retrieval"):
    ckpt = interop.load(path, task=task)
    assert ckpt.config.task == task
    want = param_shapes(ckpt.config)
    assert jax.tree.structure(want) == jax.tree.structure(ckpt.params)
    np.testing.assert_array_equal(ckpt.params["visual_encoder"]["cls_token"], params["visual_encoder"]["cls_token"])
  assert interop.load(path, task="retrieval").momentum_params is not None
  # VQA as the official loader: question encoder = the encoder, answer decoder = the decoder
  vqa = interop.load(path, task="vqa")
  assert jax.tree.structure(param_shapes(vqa.config)) == jax.tree.structure(vqa.params) and not vqa.fresh
  decoder = params["text"]["layer_0"]["decoder_attention"]["self"]["query"]["kernel"]
  np.testing.assert_array_equal(
    vqa.params["answer_decoder"]["layer_0"]["decoder_attention"]["self"]["query"]["kernel"], decoder
  )
  assert interop.load(path, task="nlvr").fresh  # merge layers and head start fresh (tests/test_vqa_nlvr.py)


def test_a_model_without_the_parts_does_not_narrow(pretrain_pth, tmp_path):
  caption = interop.load(pretrain_pth[0], task="caption")
  interop.save(caption, str(tmp_path / "cap"), "blip_jax")
  with pytest.raises(interop.CheckpointError, match="does not fit a 'vqa' model|does not fit a 'itm' model"):
    interop.load(str(tmp_path / "cap"), task="vqa")


def test_errors_not_exits(tmp_path):
  (tmp_path / "weights.npz").write_bytes(b"x")
  with pytest.raises(interop.CheckpointError, match="cannot tell the checkpoint format"):
    interop.load(str(tmp_path / "weights.npz"))
  with pytest.raises(interop.CheckpointError, match="no such file"):
    interop.load(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(interop.CheckpointError, match="neither model.json"):
    interop.load(str(tmp_path / "empty"))


def test_model_json_that_disagrees_with_the_arrays_is_refused(pretrain_pth, tmp_path):
  import json

  path, _ = pretrain_pth
  assert _convert(path, str(tmp_path / "ckpt")).returncode == 0
  meta = json.loads((tmp_path / "ckpt" / "model.json").read_text())
  meta["config"]["text"]["num_layers"] = 3
  (tmp_path / "ckpt" / "model.json").write_text(json.dumps(meta))
  with pytest.raises(interop.CheckpointError, match="does not fit the 'pretrain' model that model.json describes"):
    interop.load(str(tmp_path / "ckpt"))
  r = _convert(str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dst-format", "hf", "--task", "caption")
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_pretrain_exports_to_hf_through_task(pretrain_pth, tmp_path):
  path, _ = pretrain_pth
  r = _convert(path, str(tmp_path / "hf"), "--dst-format", "hf", "--task", "caption")
  assert r.returncode == 0, r.stderr
  back = interop.load(str(tmp_path / "hf"))
  assert back.config.task == "caption"
  ref = interop.load(path, task="caption")
  for (p, a), (_, b) in zip(interop.keymap.flatten(back.params), interop.keymap.flatten(ref.params)):
    np.testing.assert_array_equal(a, b, err_msg="/".join(p))

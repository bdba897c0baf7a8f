"""Bad checkpoints fail with one error naming the file and the keys."""

import jax
import numpy as np
import pytest

from blip_jax.interop import (
  Checkpoint,
  CheckpointError,
  export_state_dict,
  import_state_dict,
  load_hf,
  load_salesforce,
  save_hf,
  save_salesforce,
)
from blip_jax.models import init_params, tiny
from blip_jax.models.momentum import momentum_view


@pytest.fixture(scope="module")
def caption(tmp_path_factory):
  c = tiny("caption")
  ckpt = Checkpoint(c, jax.tree.map(np.asarray, init_params(c, jax.random.key(0))))
  path = str(tmp_path_factory.mktemp("ck") / "caption.pth")
  save_salesforce(ckpt, path)
  return ckpt, path


def test_wrong_task_names_file_keys_and_suggests_task(caption):
  ckpt, path = caption
  with pytest.raises(CheckpointError) as e:
    load_salesforce(path, "itm", config=ckpt.config)
  msg = str(e.value)
  assert msg.startswith(path) and "itm_head.weight" in msg and "pass --task caption" in msg
  assert "itm_head.weight" in e.value.missing  # the full lists ride on the exception
  assert "text_decoder.cls.predictions.bias" in e.value.unexpected
  assert "and 24 more" in msg  # long lists are cut in the message, never silently


def test_truncated_file_names_file(caption, tmp_path):
  _, path = caption
  data = open(path, "rb").read()
  bad = tmp_path / "truncated.pth"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated.pth: not a readable PyTorch checkpoint"):
    load_salesforce(str(bad), "caption")


def test_shape_mismatch_names_key_and_shapes(caption):
  ckpt, _ = caption
  sd = export_state_dict(ckpt, "salesforce")
  sd["text_decoder.bert.encoder.layer.1.output.dense.weight"] = np.zeros((32, 65), np.float32)
  sd["visual_encoder.blocks.0.mlp.fc1.bias"] = np.zeros((7,), np.float32)
  with pytest.raises(CheckpointError) as e:
    import_state_dict(sd, "caption", config=ckpt.config, source="my.pth")
  msg = str(e.value)
  assert msg.startswith("my.pth:") and "2 shape mismatches" in msg
  assert "text_decoder.bert.encoder.layer.1.output.dense.weight: (32, 65) vs (32, 64)" in msg
  assert "visual_encoder.blocks.0.mlp.fc1.bias: (7,) vs (96,)" in msg


def test_missing_and_unexpected_listed_together(caption):
  ckpt, _ = caption
  sd = export_state_dict(ckpt, "salesforce")
  del sd["text_decoder.cls.predictions.bias"]
  sd["text_decoder.bert.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
  with pytest.raises(CheckpointError) as e:
    import_state_dict(sd, "caption", config=ckpt.config)
  assert "1 missing keys" in str(e.value) and "text_decoder.cls.predictions.bias" in str(e.value)
  assert "1 unexpected keys" in str(e.value) and "pooler.dense.weight" in str(e.value)


def test_ignore_momentum_group():
  c = tiny("retrieval")
  params = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  queues = {
    "image": np.zeros((8, 16), np.float32),
    "text": np.zeros((8, 16), np.float32),
    "ptr": 0,
    "idx": np.zeros(8, np.int64),
  }
  sd = export_state_dict(Checkpoint(c, params, momentum_view(params), queues), "salesforce")
  sd = {k: v for k, v in sd.items() if "_m." not in k}  # a checkpoint without momentum copies
  with pytest.raises(CheckpointError, match="missing keys"):
    import_state_dict(sd, "retrieval", config=c)
  out = import_state_dict(sd, "retrieval", config=c, ignore=["momentum"])
  assert out.momentum_params is None and out.queues is not None


def test_hf_malformed_config_and_missing_weights(tmp_path):
  c = tiny("caption")
  save_hf(Checkpoint(c, jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))), str(tmp_path / "hf"))
  (tmp_path / "hf" / "config.json").write_text('{"architectures": ["BlipForConditionalGeneration"],\n oops')
  with pytest.raises(CheckpointError, match=r"config.json: malformed json at line 2"):
    load_hf(str(tmp_path / "hf"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no model.safetensors"):
    load_hf(str(tmp_path / "empty"))


def test_hf_has_no_pretraining_class():
  c = tiny("pretrain")
  with pytest.raises(ValueError, match="no Hugging Face class"):
    export_state_dict(Checkpoint(c, {}), "hf")

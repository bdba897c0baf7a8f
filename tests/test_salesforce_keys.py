"""Our Salesforce exports carry exactly the official key names and shapes (ViT-B, reference sizes)."""

import os
import re

import jax
import numpy as np
import pytest

from blip_jax.interop import Checkpoint, export_state_dict, import_state_dict
from blip_jax.models import BlipConfig, param_shapes, vit_b16
from blip_jax.models.momentum import momentum_view

# Facts about the official checkpoints (every key and shape), vendored from the official models.
REF = os.path.join(os.path.dirname(__file__), "reference", "salesforce_state_dict_keys.txt")
# reference section title -> (our task, image size)
SECTIONS = {
  "BLIP_Decoder": ("caption", 384),
  "BLIP_ITM": ("itm", 384),
  "BLIP_VQA": ("vqa", 480),
  "BLIP_Retrieval": ("retrieval", 384),
  "BLIP_Pretrain": ("pretrain", 224),
}


def _reference():
  """{section: (declared key count, {key: shape})} with N expanded to the layer indices."""
  out, name = {}, None
  for line in open(REF):
    m = re.match(r"=== (\w+).*?: (\d+) keys", line)
    if m:
      name = m.group(1)
      out[name] = (int(m.group(2)), {})
      continue
    m = re.match(r"\s+(\S+)\s+\(([\d, ]*)\)", line)
    if m and name:
      shape = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
      key = m.group(1)
      n = 12 if ("blocks.N" in key or "layer.N" in key) else 1
      for i in range(n):
        out[name][1][key.replace(".N.", f".{i}.")] = shape
  return out


def _zeros(tree):
  """Zero-stride arrays: the export runs for real without allocating ViT-B-sized memory."""
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), tree)


@pytest.fixture(scope="module")
def reference():
  if not os.path.exists(REF):
    pytest.fail(f"reference key list not found at {REF}")
  return _reference()


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_export_matches_official_keys_and_shapes(section, reference):
  task, size = SECTIONS[section]
  declared, want = reference[section]
  assert len(want) == declared  # the parser expanded the listing correctly
  config = BlipConfig(task=task, vision=vit_b16(size))
  params = _zeros(param_shapes(config))
  momentum = momentum_view(params) if task in ("pretrain", "retrieval") else None
  queues = None
  if momentum is not None:
    q = 57600
    queues = {
      "image": np.broadcast_to(np.float32(0), (q, 256)),
      "text": np.broadcast_to(np.float32(0), (q, 256)),
      "ptr": 0,
      "idx": np.broadcast_to(np.int64(-100), (q,)),
    }
    if task == "pretrain":
      del queues["idx"]
  sd = export_state_dict(Checkpoint(config, params, momentum, queues), "salesforce")
  got = {k: tuple(np.shape(v)) for k, v in sd.items()}
  assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
  bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
  assert not bad
  assert (
    sd.get("text_encoder.embeddings.position_ids", sd.get("text_decoder.bert.embeddings.position_ids")).dtype
    == np.int64
  )


def test_pretrain_shared_tensors_stored_under_both_prefixes():
  from blip_jax.models import init_params, tiny

  c = tiny("pretrain")
  params = jax.tree.map(np.asarray, init_params(c, jax.random.key(0)))
  queues = {"image": np.zeros((8, 16), np.float32), "text": np.zeros((8, 16), np.float32), "ptr": 0}
  sd = export_state_dict(Checkpoint(c, params, None, queues), "salesforce")
  shared = "encoder.layer.1.crossattention.self.key.weight"
  np.testing.assert_array_equal(sd["text_encoder." + shared], sd["text_decoder.bert." + shared])
  own = "encoder.layer.1.attention.self.key.weight"
  assert not np.array_equal(sd["text_encoder." + own], sd["text_decoder.bert." + own])
  np.testing.assert_array_equal(
    sd["text_decoder.cls.predictions.decoder.weight"], sd["text_decoder.bert.embeddings.word_embeddings.weight"]
  )
  # momentum defaults to a copy of params (the official model starts that way)
  np.testing.assert_array_equal(sd["text_encoder_m." + own], sd["text_encoder." + own])
  # and an import that finds the two copies of a shared tensor different says so
  sd["text_decoder.bert." + shared] = sd["text_decoder.bert." + shared] + 1
  with pytest.raises(ValueError, match="tied copies that differ"):
    import_state_dict(sd, "pretrain", config=c)

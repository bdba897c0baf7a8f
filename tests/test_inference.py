"""`blip_jax.load` and BlipModel: ITM probabilities (with [CLS] and with [ENC]), ITC similarities and
features equal transformers' BlipForImageTextRetrieval on tiny imported weights; n-best beam scores
equal `sequences_scores`; bad inputs give one clear error."""

import numpy as np
import pytest
import torch

import blip_jax
from blip_jax import interop
from blip_jax.data.sources import BadExample
from blip_jax.interop import import_state_dict
from tests import hf_reference as ref

WORDS = ["a", "red", "blue", "dog", "cat", "on", "the", "sofa", "picture", "of", "two", "green"]


def _vocab(path):
  """A bert-base-uncased-shaped vocab.txt (special ids 0 / 100-103 where BERT has them, 30522 rows)."""
  rows = [f"[unused{i}]" for i in range(30522)]
  rows[0], rows[100], rows[101], rows[102], rows[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
  for i, w in enumerate(WORDS):
    rows[1000 + i] = w
  path.write_text("\n".join(rows) + "\n")
  return str(path)


def _save(model, task, c, tmp_path):
  ckpt = import_state_dict(ref.state_dict_numpy(model), task, "hf", config=c)
  interop.save(ckpt, str(tmp_path / task), "blip_jax", _vocab(tmp_path / "vocab.txt"))
  return str(tmp_path / task)


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
  c = ref.our_config("itm")
  model = ref.hf_model("BlipForImageTextRetrieval", c)
  return c, model, _save(model, "itm", c, tmp_path_factory.mktemp("itm"))


TEXTS = ["a red dog on the sofa", "two green cats", "a picture of a blue dog"]


@pytest.mark.parametrize("first", ["cls", "enc"])
def test_itm_probabilities_equal_transformers(retrieval, first):
  c, hf, path = retrieval
  m = blip_jax.load(path, itm_first_token=first if first == "enc" else None)  # task itm: [CLS] by default
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
  probs = m.itm(images, TEXTS)
  pixels = m.preprocess(images)
  ids, mask = m.tokenize(TEXTS)
  ids = ids.copy()
  ids[:, 0] = 101 if first == "cls" else 30523
  for i in range(2):
    with torch.no_grad():
      out = hf(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        pixel_values=ref.nchw(np.repeat(pixels[i : i + 1], 3, 0)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
      )
    want = torch.softmax(out.itm_score, -1)[:, 1].numpy()
    assert np.abs(probs[i] - want).max() <= 1e-5


def test_similarity_and_features_equal_transformers(retrieval):
  c, hf, path = retrieval
  m = blip_jax.load(path)
  images = [np.random.default_rng(1).random((32, 32, 3)) for _ in range(3)]
  pixels = m.preprocess(images)
  ids, mask = m.tokenize(TEXTS)
  with torch.no_grad():
    out = hf(
      input_ids=torch.from_numpy(ids.astype(np.int64)),
      pixel_values=ref.nchw(pixels),
      attention_mask=torch.from_numpy(mask.astype(np.int64)),
      use_itm_head=False,
    )
    img = hf.vision_model(pixel_values=ref.nchw(pixels)).last_hidden_state
    txt = hf.text_encoder(
      input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask.astype(np.int64))
    ).last_hidden_state
    i_feat = torch.nn.functional.normalize(hf.vision_proj(img[:, 0]), dim=-1).numpy()
    t_feat = torch.nn.functional.normalize(hf.text_proj(txt[:, 0]), dim=-1).numpy()
  assert np.abs(m.image_features(images) - i_feat).max() <= 1e-5
  assert np.abs(m.text_features(TEXTS) - t_feat).max() <= 1e-5
  sim = m.similarity(images, TEXTS)
  assert np.abs(np.diag(sim) - out.itm_score.numpy()).max() <= 1e-5  # HF scores the given pairs


def test_n_best_beam_scores_equal_sequences_scores(tmp_path):
  c = ref.our_config("caption")
  hf = ref.hf_model("BlipForConditionalGeneration", c, seed=1)
  with torch.no_grad():  # decisive weights, as tests/test_generate.py
    hf.text_decoder.bert.embeddings.word_embeddings.weight.mul_(6.0)
    hf.text_decoder.cls.predictions.bias[102] += 5.5
  m = blip_jax.load(_save(hf, "caption", c, tmp_path))
  images = [np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
  got = m.caption(images, num_beams=3, num_captions=3, prompt="", max_length=12, min_length=3)
  with torch.no_grad():
    out = hf.generate(
      pixel_values=ref.nchw(m.preprocess(images)),
      num_beams=3,
      num_return_sequences=3,
      max_length=12,
      min_length=3,
      output_scores=True,
      return_dict_in_generate=True,
    )
  want = out.sequences_scores.numpy().reshape(2, 3)
  scores = np.array([[s for _, s in row] for row in got])
  assert np.abs(scores - want).max() <= 1e-4
  texts = [
    [
      m.tokenizer.decode(seq[1:]).replace("[SEP]", "").replace("[PAD]", "").strip()
      for seq in out.sequences[i * 3 : i * 3 + 3].numpy()
    ]
    for i in range(2)
  ]
  assert [[t for t, _ in row] for row in got] == texts
  sampled = m.caption(images, sample=True, num_captions=2, prompt="", max_length=12, min_length=3)
  assert all(len(row) == 2 and all(s < 0 for _, s in row) for row in sampled)  # log-probabilities


def test_bad_inputs_give_one_clear_error(retrieval, tmp_path):
  _, _, path = retrieval
  m = blip_jax.load(path)
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(BadExample, match="broken.jpg"):
    m.itm([str(tmp_path / "broken.jpg")], ["a dog"])
  with pytest.raises(ValueError, match="text 1 .* is empty"):
    m.itm([np.zeros((8, 8, 3), np.uint8)], ["a dog", "  "])
  with pytest.raises(ValueError, match="no image-grounded decoder"):
    m.caption([np.zeros((8, 8, 3), np.uint8)])
  with pytest.raises(ValueError, match="H x W x 3"):
    m.image_features([np.zeros((8, 8), np.uint8)])
  with pytest.raises(ValueError, match="dtype="):
    blip_jax.load(path, dtype="float16")
  bf16 = blip_jax.load(path, dtype="bfloat16")
  img = [np.full((32, 32, 3), 100, np.uint8)]
  assert np.abs(bf16.itm(img, ["a dog"]) - m.itm(img, ["a dog"])).max() < 0.05

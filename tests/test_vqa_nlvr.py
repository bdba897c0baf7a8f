"""VQA and NLVR2: rank inference equals brute-force scoring of every answer, generate equals
transformers' on imported weights, the official VQA accuracy, the official NLVR2 key set in and out,
and NLVR2 initialised from a pretraining checkpoint as the official loader does."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from blip_jax import interop
from blip_jax.evaluate import vqa_accuracy
from blip_jax.evaluate.vqa import Vqa
from blip_jax.interop import Checkpoint, export_state_dict, import_state_dict
from blip_jax.models import Blip, init_params, tiny
from blip_jax.train import build, inputs
from blip_jax.train import sharding as S
from experiments import vqa_base
from tests import hf_reference as ref

NLVR_REF = os.path.join(os.path.dirname(__file__), "reference", "salesforce_nlvr_state_dict_full.txt")


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def vqa_setup(tmp_path_factory):
  cfg = vqa_base.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  exp = build.experiment(cfg, 8, 1, tok)
  params = init_params(exp.model, jax.random.key(1))
  return cfg, tok, exp, params


def test_rank_with_every_answer_equals_brute_force(vqa_setup, devices):
  cfg, tok, exp, params = vqa_setup
  ev = Vqa(exp, tok, S.make_mesh((8, 1, 1)))
  n = len(ev.answer_list)
  assert n >= 3
  data = {k: ev.data[k][:8] for k in ("images", "ids", "mask")}
  cand_ids, cand_mask = ev.candidates
  got = np.asarray(ev._rank(params, data["images"], data["ids"], data["mask"], cand_ids, cand_mask, k=n))
  model = Blip(exp.model)
  img = model.apply({"params": params}, jnp.asarray(data["images"]), method=Blip.encode_image)
  q = model.apply(
    {"params": params}, jnp.asarray(data["ids"]), jnp.asarray(data["mask"]), img, method=Blip.encode_multimodal
  )
  answer_logits = jax.jit(
    lambda ids, mask, states, qmask: model.apply(
      {"params": params}, ids, mask, states, qmask, method=Blip.answer_logits
    )
  )
  for b in range(8):  # every answer's summed label-smoothed (0.1) NLL, in numpy
    losses = []
    for a in range(n):
      ids, mask = cand_ids[a : a + 1], cand_mask[a : a + 1]
      logits = answer_logits(jnp.asarray(ids), jnp.asarray(mask), q[b : b + 1], jnp.asarray(data["mask"][b : b + 1]))
      logp = _np_log_softmax(np.asarray(logits[0, :-1], np.float64))
      t = ids[0, 1:]
      per = 0.9 * -logp[np.arange(len(t)), t] - 0.1 * logp.mean(-1)
      losses.append(float((per * mask[0, 1:]).sum()))
    assert got[b] == int(np.argmin(losses)), (b, losses)


def test_vqa_accuracy_is_the_official_formula():
  assert vqa_accuracy.accuracy("Two", ["2"] * 10) == 1.0  # number words, case
  assert vqa_accuracy.accuracy("the dog.", ["dog"] * 10) == 1.0  # articles, period
  assert vqa_accuracy.accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)  # leave-one-out
  assert vqa_accuracy.accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(0.9)  # contractions
  assert vqa_accuracy.accuracy("cat", ["dog"] * 10) == 0.0


def test_vqa_generate_equals_transformers():
  c = ref.our_config("vqa", vision_width=32, text_width=32, vision_mlp=64)
  model = ref.hf_model("BlipForQuestionAnswering", c)
  ckpt = import_state_dict(ref.state_dict_numpy(model), "vqa", "hf", config=c)
  images, q_ids, _ = ref.inputs(c, batch=2, seed=1)
  q_ids[:, 0] = 30523
  q_mask = np.ones_like(q_ids)  # unpadded: transformers ignores the question mask in the decoder
  with torch.no_grad():
    want = model.generate(
      input_ids=torch.from_numpy(q_ids), pixel_values=ref.nchw(images), num_beams=3, max_length=10, min_length=1
    ).numpy()
  from blip_jax.generate.search import generate
  from blip_jax.tasks.vqa import question_states

  states = question_states(Blip(c), ckpt.params, jnp.asarray(images), jnp.asarray(q_ids), jnp.asarray(q_mask))
  options = (("max_length", 10), ("min_length", 1), ("num_beams", 3))
  ids, lengths = generate(
    {"text": ckpt.params["answer_decoder"]}, c.text, states, jnp.zeros((0,), jnp.int32), method="beam", options=options
  )
  for r in range(2):
    ours = np.asarray(ids[r, : int(lengths[r])])
    theirs = want[r][want[r] != 0] if (want[r] == 0).any() else want[r]
    np.testing.assert_array_equal(ours, theirs[: len(ours)])
    assert len(ours) == len(theirs)


def _nlvr_reference():
  keys = {}
  for line in open(NLVR_REF):
    m = re.match(r"\s+(\S+)\s+\(([\d, ]*)\)", line)
    if m:
      keys[m.group(1)] = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
  return keys


def test_nlvr_export_has_the_official_keys_in_order():
  from blip_jax.models import BlipConfig, param_shapes, vit_b16
  from blip_jax.models.config import TextConfig

  config = BlipConfig(task="nlvr", vision=vit_b16(384), text=TextConfig(num_cross_branches=2))
  zeros = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), param_shapes(config))
  sd = export_state_dict(Checkpoint(config, zeros), "salesforce")
  want = _nlvr_reference()
  assert len(want) == 579
  assert {k: tuple(np.shape(v)) for k, v in sd.items()} == want


@pytest.mark.slow
def test_random_official_nlvr_state_dict_roundtrips_bit_exactly():
  rng = np.random.default_rng(0)
  sd = {}
  for k, shape in _nlvr_reference().items():
    sd[k] = (
      np.arange(shape[1])[None].astype(np.int64)
      if k.endswith("position_ids")
      else rng.standard_normal(shape, np.float32)
    )
  ckpt = import_state_dict(sd, "nlvr", "salesforce")
  assert ckpt.config.text.num_cross_branches == 2 and ckpt.config.text.cross_merge_from_layer == 6
  out = export_state_dict(ckpt, "salesforce")
  assert set(out) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(out[k], sd[k], err_msg=k)


def test_nlvr_from_a_pretraining_checkpoint_copies_the_cross_attention(tmp_path):
  pre = tiny("pretrain")
  params = jax.tree.map(np.asarray, init_params(pre, jax.random.key(0)))
  interop.save(Checkpoint(pre, params), str(tmp_path / "pre"), "blip_jax")
  ckpt = interop.load(str(tmp_path / "pre"), task="nlvr")
  assert ckpt.fresh == ("merge_layer", "cls_head_0", "cls_head_2")
  for n in (0, 1):
    src, dst = params["text"][f"layer_{n}"]["crossattention"], ckpt.params["text"][f"layer_{n}"]["crossattention"]
    for branch in ("self0", "self1"):
      for name in ("query", "key", "value"):
        np.testing.assert_array_equal(dst[branch][name]["kernel"], src["self"][name]["kernel"])
    for dense in ("dense0", "dense1"):
      np.testing.assert_array_equal(dst["output"][dense]["kernel"], src["output"]["dense"]["kernel"])
  fresh = jax.tree.map(np.asarray, init_params(tiny("nlvr"), jax.random.key(5)))
  full, filled = interop.fill_fresh(ckpt.params, fresh, ckpt.fresh)
  assert sorted(filled) == sorted(
    ["cls_head_0/bias", "cls_head_0/kernel", "cls_head_2/bias", "cls_head_2/kernel"]
    + ["text/layer_1/crossattention/output/merge_layer/bias", "text/layer_1/crossattention/output/merge_layer/kernel"]
  )
  interop.select_params(fresh, full, "nlvr", exact=True)  # the whole NLVR2 tree, nothing extra

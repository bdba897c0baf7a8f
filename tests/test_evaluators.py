"""The fine-tuning evaluators on a tiny random model: the sharded ITM re-rank equals a plain per-pair
loop, metrics do not depend on the mesh, caption metrics are pycocoevalcap's, and the captioning
objective masks exactly the prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blip_jax.evaluate import coco_metrics, eval_set
from blip_jax.evaluate.retrieval import Retrieval
from blip_jax.losses import lm_loss
from blip_jax.models.blip import Blip, init_params
from blip_jax.train import build, inputs
from blip_jax.train import sharding as S
from experiments import caption_coco_base, retrieval_coco_base


@pytest.fixture(scope="module")
def retrieval_setup(tmp_path_factory):
  cfg = retrieval_coco_base.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  exp = build.experiment(cfg, 8, 1, tok)
  data = eval_set.load(cfg, tok, exp.model.vision.image_size)
  params = init_params(exp.model, jax.random.key(3))
  return cfg, tok, exp, data, params


def _evaluator(retrieval_setup, mesh_shape, pairs=None):
  cfg, tok, exp, data, params = retrieval_setup
  mesh = S.make_mesh(mesh_shape)
  return Retrieval(exp, tok, mesh, data=data, pairs_per_batch=pairs), mesh


def test_rerank_equals_a_per_pair_loop(retrieval_setup, devices):
  cfg, tok, exp, data, params = retrieval_setup
  ev, mesh = _evaluator(retrieval_setup, (8, 1, 1), pairs=24)  # several passes, padded ones too
  with jax.set_mesh(mesh):
    gallery, image_feat, text_feat = ev.features(params)
    itm = ev.itm_scorer(params, gallery)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.integers(0, len(data), 40))  # grouped by image (the image -> text direction)
    cols = rng.integers(0, len(ev.ids), 40)
    grouped, scattered = itm(rows, cols), itm(rows[::-1].copy(), cols[::-1].copy())[::-1]
  model = Blip(exp.model)
  img = model.apply({"params": params}, jnp.asarray(data.images), method=Blip.encode_image)
  loop = [
    float(
      model.apply(
        {"params": params},
        jnp.asarray(ev.ids[c : c + 1]),
        jnp.asarray(ev.mask[c : c + 1]),
        img[r : r + 1],
        method=Blip.itm_logits,
      )[0, 1]
    )
    for r, c in zip(rows, cols)
  ]
  np.testing.assert_allclose(grouped, loop, atol=1e-5)
  np.testing.assert_allclose(scattered, loop, atol=1e-5)
  feat_i = model.apply({"params": params}, img, method=Blip.image_feature)
  np.testing.assert_allclose(image_feat, np.asarray(feat_i), atol=1e-5)


def test_retrieval_metrics_do_not_depend_on_the_mesh(retrieval_setup, devices):
  params = retrieval_setup[4]
  results = []
  for shape in ((8, 1, 1), (2, 4, 1)):
    ev, mesh = _evaluator(retrieval_setup, shape)
    rules = retrieval_setup[2].rules
    shardings = S.state_shardings(
      ev.model.config, retrieval_setup[2].optimizer, mesh, rules, template={"params": params}
    )
    with jax.set_mesh(mesh), __import__("flax").linen.logical_axis_rules(rules):
      metrics, samples = ev.evaluate(jax.device_put(params, shardings["params"]))
    results.append(metrics)
  assert results[0] == pytest.approx(results[1], abs=1e-6)
  assert results[0]["texts"] == 5 * results[0]["images"]


def test_caption_metrics_are_pycocoevalcaps_and_true_captions_win():
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider

  from blip_jax.data.synthetic import SyntheticWorld

  world = SyntheticWorld(60, seed=1)
  refs = {i: world.captions(i, 5) for i in range(60)}
  true = {i: world.captions(i, 6)[5] for i in range(60)}  # another true description of each scene
  shuffled = {i: true[(i + 7) % 60] for i in range(60)}
  got = coco_metrics.score(true, refs)
  tok = coco_metrics.tokenize({**{("r", k): [v] for k, v in true.items()}, **{("g", k): v for k, v in refs.items()}})
  res, gts = {k: tok[("r", k)] for k in true}, {k: tok[("g", k)] for k in refs}
  assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
  assert got["Bleu_4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-12)
  worse = coco_metrics.score(shuffled, refs)
  assert got["CIDEr"] > worse["CIDEr"] + 0.5 and got["Bleu_4"] > worse["Bleu_4"]


@pytest.mark.skipif(not coco_metrics.has_java(), reason="needs java for the PTB tokenizer")
def test_python_tokenizer_matches_ptb_on_captions():
  caps = {
    0: ["A man, riding a horse.", "Two dogs' toys!", "a red circle left of a blue square"],
    1: ["It's (very) nice-looking"],
  }
  ptb = coco_metrics.tokenize(caps, use_java=True)
  ours = coco_metrics.tokenize(caps, use_java=False)
  assert ptb[0] == ours[0]


def test_caption_prompt_is_masked_from_the_targets(tmp_path):
  cfg = caption_coco_base.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path))
  exp = build.experiment(cfg, 1, 1, tok)
  prompt = tok.tokenize_ids(cfg.prompt)
  assert exp.objective.prompt_length == 1 + len(prompt)  # [DEC] + the prompt's tokens
  pre = inputs.preprocess(cfg, tok, exp.model.vision.image_size, train=True)
  from blip_jax.data.synthetic import SyntheticWorld, render

  ex = SyntheticWorld(1).example(0)
  out = pre({"pil": [render(ex.objects, 32)], "caption": ex.caption}, 0, np.random.default_rng(0))
  assert list(out["ids"][1 : 1 + len(prompt)]) == list(prompt)  # [CLS] prompt caption [SEP]
  rng = np.random.default_rng(1)
  ids, mask = out["ids"][None], out["mask"][None]
  logits = jnp.asarray(rng.normal(size=(1, ids.shape[1], exp.model.text.vocab_size)), jnp.float32)
  base = float(lm_loss(logits, ids, mask, 0.1, exp.objective.prompt_length))
  changed = ids.copy()
  changed[0, 1 : exp.objective.prompt_length] = rng.integers(5, 50, exp.objective.prompt_length - 1)
  assert float(lm_loss(logits, changed, mask, 0.1, exp.objective.prompt_length)) == base
  caption_changed = ids.copy()
  caption_changed[0, exp.objective.prompt_length] += 1
  assert float(lm_loss(logits, caption_changed, mask, 0.1, exp.objective.prompt_length)) != base


def test_karpathy_files_string_ids_and_five_captions(tmp_path):
  from blip_jax.data.sources import JsonSource
  from blip_jax.data.write_synthetic import write

  counts = write(str(tmp_path), 12, 4, 0.0, 0, image_size=32)
  assert counts["karpathy_train"] == 60 and counts["karpathy_test"] == 4
  src = JsonSource([str(tmp_path / "annotations" / "karpathy_train.json")], str(tmp_path), "retrieval")
  ids = [r["image_id"] for r in src.records]
  assert ids == [i // 5 for i in range(60)]  # "synthetic_3" -> 3: one dense id per image, its 5 captions share it
  cfg = retrieval_coco_base.get_config("smoke")
  cfg.eval.sources = (
    dict(type="json", ann=str(tmp_path / "annotations" / "karpathy_test.json"), image_root=str(tmp_path)),
  )
  cfg.eval.num = 0
  tok = inputs.tokenizer(cfg, str(tmp_path))
  data = eval_set.load(cfg, tok, 32)
  assert len(data) == 4 and all(len(c) == 5 for c in data.captions)
  assert list(data.image_ids) == [12, 13, 14, 15]  # from the file names' digits

"""Retrieval evaluation as the official `evaluation` of train_retrieval.py (reference s.7): image and
text features over the whole eval set, the cosine matrix, the top `eval.k_test` of every row re-scored
by ITM match logit + cosine in both directions, TR/IR@1/5/10 and r_mean. The ITC-only figures of the
same features are reported beside them (prefix `itc_`), and both again with a retrieved text counted
as right when it is word for word one of the image's captions (prefix `match_`, `itc_match_`): the
official figures count only the image's own caption records, so on data where many images share a
caption (COCO a little, the synthetic world a lot) ties among identical texts decide them.

Devices do the heavy parts, sharded over the mesh's batch axes: the image tokens of the whole gallery
stay on the devices (COCO 5k x 577 x 768 floats does not fit one host comfortably, and never needs to
leave them), and the ITM passes gather the images they need there. Image -> text pairs come grouped by
image, so each image's cross-attention K/V are projected once for its k texts; text -> image pairs are
scored one image per pair, as the official code does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from blip_jax.evaluate import eval_set
from blip_jax.evaluate.retrieval_metrics import recall_at, rerank_scores, retrieval_metrics
from blip_jax.models.blip import Blip


class Retrieval:
  """The retrieval evaluator (see the module docstring)."""

  def __init__(
    self,
    exp,
    tokenizer,
    mesh,
    out_dir: str | None = None,
    data: eval_set.EvalSet | None = None,
    pairs_per_batch: int | None = None,
  ):
    cfg = exp.cfg
    self.model, self.mesh, self.k = Blip(exp.model), mesh, cfg.eval.get("k_test", 256)
    self.data = data or eval_set.load(cfg, tokenizer, exp.model.vision.image_size)
    self.notes = [n for n in [self.data.note(cfg.eval.num)] if n]
    texts, self.txt2img, self.img2txt = self.data.texts()
    self.ids, self.mask = eval_set.tokenize(tokenizer, texts, cfg.text_length)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.batch = _round_up(cfg.eval.batch, shards)  # images / texts per feature pass
    self.pairs = _round_up(pairs_per_batch or cfg.eval.batch * 4, shards)  # (text, image) pairs per ITM pass
    self._sharded = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    self._replicated = NamedSharding(mesh, PartitionSpec())

  # ---- jitted parts ---------------------------------------------------------------------------------
  def _apply(self, params, method, *args, **kw):
    return self.model.apply({"params": params}, *args, method=method, **kw)

  @functools.cached_property
  def _image_fn(self):
    def fn(params, images):
      embeds = self._apply(params, Blip.encode_image, images)
      return embeds, self._apply(params, Blip.image_feature, embeds)

    return jax.jit(fn, out_shardings=(self._sharded, self._replicated))

  @functools.cached_property
  def _text_fn(self):
    def fn(params, ids, mask):
      return self._apply(params, Blip.text_feature, self._apply(params, Blip.encode_text, ids, mask))

    return jax.jit(fn, out_shardings=self._replicated)

  @functools.cached_property
  def _itm_fn(self):
    """(params, gallery (I, 1+N, Dv), images (U,) into the gallery, ids / mask (n, L) sharded,
    pair (n,) into `images` or None) -> (n,) match logits. With pair, each of the U images' K/V are
    projected once and gathered per text; without, text j attends to image images[j]."""

    def fn(params, gallery, images, ids, mask, pair):
      embeds = gallery[images]
      if pair is None:
        embeds = jax.lax.with_sharding_constraint(embeds, self._sharded)
      logits = self._apply(params, Blip.itm_logits, ids, mask, embeds, image_index=pair)
      return logits[:, 1]

    return jax.jit(fn, out_shardings=self._replicated)

  # ---- passes -----------------------------------------------------------------------------------------
  def features(self, params) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """(gallery image tokens (I', 1+N, Dv) on the devices, image features (I, E), text features (T, E))."""
    return (*self.image_features(params), self.text_features(params))

  def image_features(self, params) -> tuple[jax.Array, np.ndarray]:
    n_img = len(self.data)
    embeds, image_feat = [], []
    for start in range(0, n_img, self.batch):
      part = _pad(self.data.images[start : start + self.batch], self.batch)
      e, f = self._image_fn(params, part)
      embeds.append(e)
      image_feat.append(np.asarray(jax.device_get(f)))
    gallery = jax.jit(lambda *xs: jnp.concatenate(xs), out_shardings=self._sharded)(*embeds)
    return gallery, np.concatenate(image_feat)[:n_img]

  def text_features(self, params) -> np.ndarray:
    n_txt = len(self.ids)
    text_feat = []
    for start in range(0, n_txt, self.batch):
      ids, mask = (_pad(a[start : start + self.batch], self.batch) for a in (self.ids, self.mask))
      text_feat.append(np.asarray(jax.device_get(self._text_fn(params, ids, mask))))
    return np.concatenate(text_feat)[:n_txt]

  def itm_scorer(self, params, gallery):
    """itm(image_rows (n,), text_cols (n,)) -> (n,) match logits, in fixed-size sharded passes."""

    def itm(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
      out = []
      grouped = len(rows) > 1 and np.all(np.diff(rows) >= 0)  # image -> text: runs of one image
      for start in range(0, len(rows), self.pairs):
        r, c = rows[start : start + self.pairs], cols[start : start + self.pairs]
        ids, mask = (_pad(a[c], self.pairs) for a in (self.ids, self.mask))
        if grouped:
          images, pair = np.unique(r, return_inverse=True)
          size = min(_pow2(len(images)), self.pairs)  # few compiled shapes
          images, pair = _pad(images, size), _pad(pair.astype(np.int32), self.pairs)
        else:
          images, pair = _pad(r, self.pairs), None
        logits = self._itm_fn(params, gallery, images.astype(np.int32), ids, mask, pair)
        out.append(np.asarray(jax.device_get(logits))[: len(r)])
      return np.concatenate(out) if out else np.zeros((0,), np.float32)

    return itm

  def evaluate(self, params, step: int | None = None) -> tuple[dict, list]:
    """TR/IR@1/5/10, r_mean (ITM re-ranked) and the same of the cosine alone (`itc_`)."""
    return self.score(params, *self.features(params))

  def score(self, params, gallery, image_feat: np.ndarray, text_feat: np.ndarray) -> tuple[dict, list]:
    """The metrics of `evaluate` from the gallery's tokens and both sides' features."""
    sim = image_feat @ text_feat.T
    score_i2t, score_t2i = rerank_scores(sim, self.k, self.itm_scorer(params, gallery))
    metrics = retrieval_metrics(score_i2t, score_t2i, self.txt2img, self.img2txt)
    itc = retrieval_metrics(sim, sim.T, self.txt2img, self.img2txt)
    metrics.update({f"itc_{k}": v for k, v in itc.items()})
    for prefix, (i2t, t2i) in (("match_", (score_i2t, score_t2i)), ("itc_match_", (sim, sim.T))):
      for k in (1, 5, 10):
        metrics[f"{prefix}txt_r{k}"] = 100.0 * recall_at(i2t, self.same_text, k)
        metrics[f"{prefix}img_r{k}"] = 100.0 * recall_at(t2i, self.same_text.T, k)
    metrics["images"], metrics["texts"] = float(len(self.data)), float(len(self.ids))
    return metrics, self.samples(score_i2t)

  @functools.cached_property
  def same_text(self) -> np.ndarray:
    """(I, T) bool: text t is word for word (after tokenisation) one of image i's captions."""
    key = {}
    group = np.array([key.setdefault(row.tobytes(), len(key)) for row in self.ids * self.mask])
    out = np.zeros((len(self.data), len(group)), bool)
    for i, texts in enumerate(self.img2txt):
      out[i] = np.isin(group, group[texts])
    return out

  def samples(self, score_i2t: np.ndarray, n: int = 4) -> list[tuple[np.ndarray, str]]:
    """The first n images with their top retrieved text (for TensorBoard)."""
    texts = [t for caps in self.data.captions for t in caps]
    return [(self.data.images[i], texts[int(np.argmax(score_i2t[i]))]) for i in range(min(n, len(self.data)))]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pad the leading axis to `size` by repeating the last row (padded results are dropped)."""
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), 0)])

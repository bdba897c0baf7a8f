"""Zero-shot evaluation on held-out pairs during pretraining: ITC retrieval R@1/R@5 (image->text and
text->image, cosine of the projected features as in the reference's first stage) and the decoder's
next-token accuracy under teacher forcing.

Each image is paired with its first caption. A text counts as a match of an image when its token ids
equal the image's own caption's (synthetic scenes can share a caption), so chance R@1 is the mean
number of matches / N, reported beside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from blip_jax.evaluate import eval_set
from blip_jax.evaluate.retrieval_metrics import recall_at
from blip_jax.models.blip import Blip
from blip_jax.models.config import BlipConfig


def make_eval_fn(config: BlipConfig):
  """(params, images (B,S,S,3), ids (B,L), mask (B,L)) -> image feats (B,E), text feats (B,E),
  correct next tokens (B,), predicted tokens (B,). Jit it once; call on fixed-size chunks."""
  model = Blip(config)

  def fn(params, images, ids, mask):
    apply = lambda method, *a, **kw: model.apply({"params": params}, *a, method=method, **kw)
    img = apply(Blip.encode_image, images)
    image_feat = apply(Blip.image_feature, img)
    text_feat = apply(Blip.text_feature, apply(Blip.encode_text, ids, mask))
    logits = apply(Blip.decode, ids, mask, img)
    pred = jnp.argmax(logits[:, :-1], -1)
    target_mask = mask[:, 1:]
    correct = ((pred == ids[:, 1:]) * target_mask).sum(-1)
    return image_feat, text_feat, correct, target_mask.sum(-1)

  return fn


class ZeroShot:
  """The pretraining evaluator (see the module docstring)."""

  def __init__(self, exp, tokenizer, mesh, out_dir: str | None = None, data: eval_set.EvalSet | None = None):
    self.data = data or eval_set.load(exp.cfg, tokenizer, exp.model.vision.image_size)
    self.notes = [n for n in [self.data.note(exp.cfg.eval.num)] if n]
    ids, mask = eval_set.tokenize(tokenizer, [c[0] for c in self.data.captions], exp.cfg.text_length)
    self.arrays = {"images": self.data.images, "ids": ids, "mask": mask}
    self.batch = exp.cfg.eval.batch
    # outputs replicated: every process (of a pod too) gets the whole result to score
    self.fn = jax.jit(make_eval_fn(exp.model), out_shardings=NamedSharding(mesh, PartitionSpec()))

  def evaluate(self, params, step: int | None = None) -> tuple[dict, list]:
    return evaluate(self.fn, params, self.arrays, self.batch), []


def evaluate(eval_fn, params, data: dict, chunk: int) -> dict:
  """Run `eval_fn` (jitted) over `data` in chunks of `chunk` (the last one padded) and score."""
  n = len(data["ids"])
  feats_i, feats_t, correct, total = [], [], [], []
  for start in range(0, n, chunk):
    part = {k: v[start : start + chunk] for k, v in data.items()}
    m = len(part["ids"])
    if m < chunk:  # pad to the compiled shape
      part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - m, 0)]) for k, v in part.items()}
    fi, ft, c, t = jax.device_get(eval_fn(params, part["images"], part["ids"], part["mask"]))
    feats_i.append(fi[:m]), feats_t.append(ft[:m]), correct.append(c[:m]), total.append(t[:m])
  fi, ft = np.concatenate(feats_i), np.concatenate(feats_t)
  sim = fi @ ft.T
  ids = data["ids"] * data["mask"]
  match = (ids[:, None, :] == ids[None, :, :]).all(-1)
  targets = data["ids"][:, 1:][data["mask"][:, 1:] > 0]
  majority = np.bincount(targets).max() / max(len(targets), 1)  # always guessing the commonest token
  return {
    "pairs": float(n),  # what the figures are over (unreadable eval images are skipped, not scored)
    "i2t_r1": recall_at(sim, match, 1),
    "i2t_r5": recall_at(sim, match, 5),
    "t2i_r1": recall_at(sim.T, match.T, 1),
    "t2i_r5": recall_at(sim.T, match.T, 5),
    "chance_r1": float(match.sum(1).mean() / n),
    "token_accuracy": float(np.concatenate(correct).sum() / max(np.concatenate(total).sum(), 1)),
    "majority_token_accuracy": float(majority),
  }

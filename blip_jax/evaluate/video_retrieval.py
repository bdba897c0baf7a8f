"""Zero-shot text-video retrieval as the official eval_retrieval_video.py (reference s.7; MSRVTT 1k):
`eval.num_frames` (8) frames sampled uniformly from each video (data.video), the video's feature the
L2-normalised mean of its frames' projected [CLS] features, and the ITM re-rank over the concatenated
tokens of all its frames (a gallery entry of N x (1 + patches) tokens). Metrics as the retrieval
evaluator's (`txt_` video -> text, `vid_` text -> video, r_mean) plus `vid_mdR`, the median rank of the
right video (1 = first).

config.eval.video = {"ann": MSRVTT jsonl / json ([{"clip_name", "caption"}]), "root": the videos'
folder, "suffix": ".mp4" (a clip may also be a folder of frames: suffix ""), "num_frames": 8}, with
config.eval.evaluator = "video_retrieval" on a retrieval model. {"synthetic": N, "offset": ...,
"image_size": ...} writes N synthetic clips as real video files to a temporary folder first.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.data.sources import BadExample, DataError
from blip_jax.data.transforms import eval_transform
from blip_jax.data.video import read_frames
from blip_jax.evaluate.eval_set import EvalSet
from blip_jax.evaluate.retrieval import Retrieval, _pad
from blip_jax.models.blip import Blip, l2_normalize


def read_annotations(path: str) -> list[dict]:
  """MSRVTT records: a .jsonl file (the official msrvtt_test.jsonl) or a json list."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise DataError(f"{path}: annotation file not found") from None
  try:
    records = (
      [json.loads(line) for line in text.splitlines() if line.strip()] if path.endswith(".jsonl") else json.loads(text)
    )
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: malformed json at line {e.lineno}: {e.msg}") from None
  for i, r in enumerate(records):
    if not isinstance(r, dict) or not isinstance(r.get("clip_name"), str) or not isinstance(r.get("caption"), str):
      raise DataError(f"{path}: record {i}: needs string keys 'clip_name' and 'caption'")
  return records


def load_videos(video: dict, image_size: int, limit: int = 0, threads: int = 4) -> EvalSet:
  """Every readable clip's frames (V, N, S, S, 3) with its caption; unreadable clips skipped, counted."""
  if video.get("synthetic"):
    import tempfile

    from blip_jax.data.write_synthetic import write_videos

    with tempfile.TemporaryDirectory() as tmp:
      ann = write_videos(tmp, video["synthetic"], video.get("offset", 0), image_size=video.get("image_size", 96))
      spec = {k: v for k, v in video.items() if k not in ("synthetic", "offset", "image_size")}
      return load_videos(dict(spec, ann=ann, root=os.path.join(tmp, "videos")), image_size, limit, threads)
  records = read_annotations(video["ann"])[: limit or None]
  num = int(video.get("num_frames", 8))

  def one(r):
    path = os.path.join(video["root"], r["clip_name"] + video.get("suffix", ".mp4"))
    try:
      return np.stack([eval_transform(f, image_size) for f in read_frames(path, num)])
    except BadExample as e:
      logging.warning("skipped video: %s", e)
      return None

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    frames = list(pool.map(one, records))
  kept = [i for i, f in enumerate(frames) if f is not None]
  if not kept:
    raise DataError(f"{video['ann']}: no readable videos under {video['root']}")
  return EvalSet(
    np.stack([frames[i] for i in kept]),
    [[records[i]["caption"]] for i in kept],
    np.asarray(kept),
    len(records) - len(kept),
  )


class VideoRetrieval(Retrieval):
  """The video evaluator (see the module docstring): Retrieval's scoring over clips."""

  def __init__(
    self,
    exp,
    tokenizer,
    mesh,
    out_dir: str | None = None,
    data: EvalSet | None = None,
    pairs_per_batch: int | None = None,
  ):
    video = dict(exp.cfg.eval.get("video") or {})
    if data is None:
      if not video.get("synthetic") and (not video.get("ann") or not video.get("root")):
        raise ValueError("config.eval.video needs 'ann' (MSRVTT jsonl) and 'root' (the videos' folder)")
      data = load_videos(video, exp.model.vision.image_size, exp.cfg.eval.num)
    super().__init__(exp, tokenizer, mesh, out_dir, data=data, pairs_per_batch=pairs_per_batch)
    self.batch = max(self.batch // data.images.shape[1], 1)  # clips per pass: about eval.batch frames

  @functools.cached_property
  def _video_fn(self):
    def fn(params, frames):  # (B, N, S, S, 3) -> tokens (B, N * (1+P), D), feature (B, E)
      b, n = frames.shape[:2]
      tokens = self._apply(params, Blip.encode_image, frames.reshape((b * n,) + frames.shape[2:]))
      proj = self.model.apply({"params": params}, tokens[:, 0], method=lambda m, x: m.vision_proj(x))
      feature = l2_normalize(proj.reshape(b, n, -1).mean(1))
      return tokens.reshape(b, -1, tokens.shape[-1]), feature

    return jax.jit(fn, out_shardings=(self._sharded, self._replicated))

  def image_features(self, params):
    tokens, feats = [], []
    for start in range(0, len(self.data), self.batch):
      part = self.data.images[start : start + self.batch]
      t, f = self._video_fn(params, _pad(part, self.batch))
      tokens.append(t)
      feats.append(np.asarray(jax.device_get(f))[: len(part)])
    gallery = jax.jit(lambda *xs: jnp.concatenate(xs), out_shardings=self._sharded)(*tokens)
    return gallery, np.concatenate(feats)

  def score(self, params, gallery, video_feat, text_feat):
    metrics, samples = super().score(params, gallery, video_feat, text_feat)
    metrics = {k.replace("img_", "vid_").replace("images", "videos"): v for k, v in metrics.items()}
    return metrics, [(image[0], text) for image, text in samples]  # a clip's first frame

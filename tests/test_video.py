"""Zero-shot video retrieval: frames read uniformly from real video files and frame folders, one frame
per video equals image retrieval, and the median rank equals a plain computation."""

import jax
import numpy as np
import pytest

from blip_jax.data.sources import BadExample
from blip_jax.data.synthetic import SyntheticWorld
from blip_jax.data.video import read_frames, uniform_indices, write_video
from blip_jax.evaluate.eval_set import EvalSet
from blip_jax.evaluate.retrieval import Retrieval
from blip_jax.evaluate.retrieval_metrics import retrieval_metrics
from blip_jax.evaluate.video_retrieval import VideoRetrieval, load_videos
from blip_jax.models.blip import init_params
from blip_jax.train import build, inputs
from blip_jax.train import sharding as S
from experiments import retrieval_msrvtt


def test_uniform_frames_from_a_video_file_and_a_folder(tmp_path):
  frames = SyntheticWorld(3, image_size=32).video(2, frames=10)
  write_video(frames, str(tmp_path / "clip.mp4"))
  # the official np.arange(0, n, n / N, dtype=int): numpy casts the step to int too, so 0, 2, 4, 6
  assert list(uniform_indices(10, 4)) == list(np.arange(0, 10, 10 / 4, dtype=int)) == [0, 2, 4, 6]
  got = read_frames(str(tmp_path / "clip.mp4"), 4)
  assert len(got) == 4 and got[0].size == (32, 32)
  for g, i in zip(got, [0, 2, 4, 6]):  # MPEG-4 at qscale 2: close to the rendered frame
    assert np.abs(np.asarray(g, np.float32) - np.asarray(frames[i], np.float32)).mean() < 4.0
  (tmp_path / "frames").mkdir()
  for i, f in enumerate(frames):
    f.save(tmp_path / "frames" / f"{i:03d}.png")
  folder = read_frames(str(tmp_path / "frames"), 4)
  assert [np.asarray(f).tolist() for f in folder] == [np.asarray(frames[i]).tolist() for i in (0, 2, 4, 6)]
  (tmp_path / "bad.mp4").write_bytes(b"not a video")
  with pytest.raises(BadExample, match="bad.mp4"):
    read_frames(str(tmp_path / "bad.mp4"), 4)


def test_median_rank_is_the_plain_one():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(30, 30))  # one text per video; no ties
  m = retrieval_metrics(s.T, s, np.arange(30), [[i] for i in range(30)])
  ranks = [int((s[t] > s[t, t]).sum()) + 1 for t in range(30)]
  assert m["img_mdR"] == float(np.median(ranks))


@pytest.fixture(scope="module")
def video_setup(tmp_path_factory):
  cfg = retrieval_msrvtt.get_config("smoke")
  tok = inputs.tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  exp = build.experiment(cfg, 8, 1, tok)
  return cfg, tok, exp, init_params(exp.model, jax.random.key(2))


def test_one_frame_per_video_equals_image_retrieval(video_setup, devices):
  cfg, tok, exp, params = video_setup
  clips = load_videos(dict(cfg.eval.video, num_frames=1), exp.model.vision.image_size)
  assert clips.images.shape[:2] == (8, 1) and clips.skipped == 0
  mesh = S.make_mesh((8, 1, 1))
  with jax.set_mesh(mesh):
    video, _ = VideoRetrieval(exp, tok, mesh, data=clips).evaluate(params)
    frames = EvalSet(clips.images[:, 0], clips.captions, clips.image_ids, 0)
    image, _ = Retrieval(exp, tok, mesh, data=frames).evaluate(params)
  assert video == pytest.approx({k.replace("img_", "vid_").replace("images", "videos"): v for k, v in image.items()})

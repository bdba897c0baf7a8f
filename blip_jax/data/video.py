"""Videos as frame sequences: read N uniformly spaced frames from a video file (PyAV, decoded with
FFmpeg) or a folder of frame images, and write frames as a video file (the synthetic world's clips).

Frame choice is the official `frm_sampling_strategy="uniform"`: indices arange(0, n, n / N) of the
n decoded frames. Failures raise BadExample naming the file (the evaluators skip and count them).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from blip_jax.data.sources import BadExample, load_image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def uniform_indices(num_frames_in_video: int, num: int) -> np.ndarray:
  """The official uniform sampling, np.arange(0, n, n / num, dtype=int), quirk included (numpy casts the
  step to int as well: 10 frames, 4 wanted -> 0, 2, 4, 6); fewer when n < num."""
  return np.arange(0, num_frames_in_video, num_frames_in_video / num, dtype=int)[:num]


def read_frames(path: str, num: int) -> list[Image.Image]:
  """`num` RGB frames of the video file or frame folder at `path` (uniformly spaced; a clip shorter
  than `num` frames repeats its last one so every video yields `num`)."""
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
      raise BadExample(f"{path}: a frame folder without images ({', '.join(FRAME_EXTENSIONS)})")
    frames = [load_image(os.path.join(path, names[i])) for i in uniform_indices(len(names), num)]
  else:
    frames = [Image.fromarray(f) for f in _decode(path, num)]
  return frames + [frames[-1]] * (num - len(frames))


def _decode(path: str, num: int) -> list[np.ndarray]:
  import av  # lazy: only video evaluation needs FFmpeg

  if not os.path.exists(path):
    raise BadExample(f"{path}: video not found")
  try:
    with av.open(path) as container:
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  except (av.FFmpegError, ValueError, IndexError) as e:
    raise BadExample(f"{path}: unreadable video ({type(e).__name__}: {e})") from None
  if not frames:
    raise BadExample(f"{path}: no video frames")
  return [frames[i] for i in uniform_indices(len(frames), num)]


def write_video(frames: list[Image.Image], path: str, fps: int = 8) -> None:
  """Frames (same size, even width and height) -> an MPEG-4 video file."""
  import av

  width, height = frames[0].size
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"qscale": "2"}  # near-lossless: colours must survive for the captions to stay true
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame.convert("RGB")), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

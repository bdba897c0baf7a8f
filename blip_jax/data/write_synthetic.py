"""Write the synthetic world to disk in BLIP's json formats with a JPEG folder, so the real loaders
run end to end on it.

  python -m blip_jax.data.write_synthetic --out DIR [--num 2000] [--eval 200] [--noise 0.3] [--seed 0]

DIR/images/NNNNNN.jpg and, in DIR/annotations/:
  pretrain.json        [{image, caption, clean}]            (noisy captions; `clean` = the record)
  retrieval_train.json [{image, caption, image_id}]         (true captions)
  retrieval_eval.json  [{image, caption: [...]}]            (held-out examples)
  karpathy_train.json  [{image, caption, image_id: "synthetic_N"}], five per image   (the official
  karpathy_test.json   [{image, caption: [5 captions]}]      Karpathy-split formats, string ids)
  vqa_train.json       [{image, question, answer: [...], dataset: "synthetic"}]
  nlvr_train.json      [{images: [a, b], sentence, label}]
With --videos N, DIR/videos/NNNNNN.mp4 holds N clips of held-out scenes with small motion and
annotations/msrvtt_test.jsonl their captions ({clip_name, caption}, the official MSRVTT format).
Image paths are relative to DIR. Unless --no-tfds, pretrain.json is also written as the array_record
TFDS dataset DIR/tfds/blip_captions/1.0.0 (read it with TfdsSource(directory=...)).
"""

from __future__ import annotations

import argparse
import json
import os

from blip_jax.data.synthetic import SyntheticWorld


def write(out: str, num: int, num_eval: int, noise: float, seed: int, image_size: int = 96) -> dict:
  world = SyntheticWorld(num + num_eval, seed=seed, noise=noise, image_size=image_size, noisy_prefix=num)
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
  names = (
    "pretrain",
    "retrieval_train",
    "retrieval_eval",
    "karpathy_train",
    "karpathy_test",
    "vqa_train",
    "nlvr_train",
  )
  ann = {k: [] for k in names}
  for i in range(len(world)):
    img, ex = world[i]
    rel = f"images/{i:06d}.jpg"
    img.save(os.path.join(out, rel), quality=95)
    if i >= num:  # held out: evaluation only, true captions
      ann["retrieval_eval"].append({"image": rel, "caption": [ex.true_caption]})
      ann["karpathy_test"].append({"image": rel, "caption": world.captions(i, 5)})
      continue
    ann["pretrain"].append({"image": rel, "caption": ex.caption, "clean": ex.clean})
    ann["retrieval_train"].append({"image": rel, "caption": ex.true_caption, "image_id": i})
    for caption in world.captions(i, 5):
      ann["karpathy_train"].append({"image": rel, "caption": caption, "image_id": f"synthetic_{i}"})
    for q, a in world.vqa(i):
      ann["vqa_train"].append({"image": rel, "question": q, "answer": [a], "dataset": "synthetic"})
    left, right, sentence, label = world.nlvr(i)
    if right < num:
      ann["nlvr_train"].append({"images": [rel, f"images/{right:06d}.jpg"], "sentence": sentence, "label": bool(label)})
  for name, records in ann.items():
    with open(os.path.join(out, "annotations", f"{name}.json"), "w") as f:
      json.dump(records, f)
  return {name: len(records) for name, records in ann.items()}


def write_videos(out: str, num: int, offset: int, seed: int = 0, image_size: int = 96, frames: int = 8) -> str:
  """Clips of scenes [offset, offset + num) as MPEG-4 files in out/videos and their captions in
  out/annotations/msrvtt_test.jsonl. Returns the annotation path."""
  from blip_jax.data.video import write_video

  world = SyntheticWorld(offset + num, seed=seed, image_size=image_size)
  os.makedirs(os.path.join(out, "videos"), exist_ok=True)
  os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
  path = os.path.join(out, "annotations", "msrvtt_test.jsonl")
  with open(path, "w") as f:
    for i in range(offset, offset + num):
      write_video(world.video(i, frames), os.path.join(out, "videos", f"{i:06d}.mp4"))
      f.write(json.dumps({"clip_name": f"{i:06d}", "caption": world.example(i).true_caption}) + "\n")
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m blip_jax.data.write_synthetic", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--num", type=int, default=2000, help="training examples")
  p.add_argument("--eval", type=int, default=200, help="held-out examples")
  p.add_argument("--noise", type=float, default=0.3, help="fraction of pretraining captions made wrong")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image-size", type=int, default=96)
  p.add_argument("--no-tfds", action="store_true", help="skip writing the TFDS array_record copy")
  p.add_argument("--videos", type=int, default=0, help="also write this many held-out clips (MSRVTT format)")
  a = p.parse_args(argv)
  counts = write(a.out, a.num, a.eval, a.noise, a.seed, a.image_size)
  if a.videos:
    write_videos(a.out, a.videos, a.num, a.seed, a.image_size)
    print(f"wrote {a.videos} clips to {a.out}/videos")
  print(f"wrote {a.num + a.eval} images to {a.out}/images; " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
  if not a.no_tfds:
    from blip_jax.data.tfds_source import build_from_json

    path = build_from_json(
      os.path.join(a.out, "annotations", "pretrain.json"), a.out, os.path.join(a.out, "tfds"), kind="pretrain"
    )
    print(f"wrote the TFDS array_record dataset {path}")


if __name__ == "__main__":
  main()

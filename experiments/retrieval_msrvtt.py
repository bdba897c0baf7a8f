"""Zero-shot text-video retrieval on MSRVTT (1k test) from the COCO-finetuned retrieval model: paper
Table 10, the official configs/retrieval_msrvtt.yaml (reference s.7): 8 uniformly sampled frames,
384 px, k_test 128. Evaluation only:

  python -m blip_jax.evaluate --config experiments/retrieval_msrvtt.py --checkpoint /ckpt/model_base_retrieval_coco.pth
  variants: `:cpu` evaluates the demo's model (or a retrieval fine-tune of it: --checkpoint) on 256
  synthetic clips written as MPEG-4 files; `:smoke` is tiny, for tests.
"""

from experiments import retrieval_coco_base

ROOT = "/data/blip"


def get_config(arg: str = ""):
  c = retrieval_coco_base.get_config(arg)
  c.eval.evaluator = "video_retrieval"
  c.eval.k_test = 128
  c.eval.num = 0
  c.eval.video = dict(ann=f"{ROOT}/msrvtt_test.jsonl", root=f"{ROOT}/msrvtt/videos", suffix=".mp4", num_frames=8)
  c.init_from = ""  # evaluation only: pass the model with --checkpoint
  if arg == "cpu":
    c.eval.video = dict(synthetic=256, offset=4096, image_size=64, num_frames=8)
    c.eval.k_test, c.eval.batch = 32, 64
  elif arg:
    c.eval.video = dict(synthetic=8, offset=64, image_size=32, num_frames=4)
  return c

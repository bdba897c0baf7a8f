"""Image-text retrieval fine-tuning on Flickr30K (Karpathy split), ViT-B/16 at 384 px: paper Table 5,
the official configs/retrieval_flickr.yaml (reference s.7). As COCO's, except: k_test 128, hard
negatives within each data shard (negative_all_rank False), the Flickr annotation files.

  python -m blip_jax.train --config experiments/retrieval_flickr_base.py --workdir DIR \
      --config.init_from=/ckpt/model_base.pth
  variants: `:cpu` (as retrieval_coco_base's).
"""

from experiments import retrieval_coco_base

ROOT = "/data/blip"
TRAIN = [dict(type="json", ann=[f"{ROOT}/flickr30k_train.json"], image_root=f"{ROOT}/flickr30k")]
EVAL = [dict(type="json", ann=[f"{ROOT}/flickr30k_val.json"], image_root=f"{ROOT}/flickr30k")]
EVAL_TEST = [dict(type="json", ann=[f"{ROOT}/flickr30k_test.json"], image_root=f"{ROOT}/flickr30k")]


def get_config(arg: str = ""):
  c = retrieval_coco_base.get_config(arg)
  c.objective.negatives = "local"
  if arg:
    return c
  c.data.sources = tuple(TRAIN)
  c.eval.sources = tuple(EVAL)
  c.num_examples = 145_000  # captions in flickr30k_train.json
  c.eval.k_test = 128
  c.eval.every = 567
  return c

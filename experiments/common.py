"""Sections every experiment shares: the run (logging, checkpoints, eval) and the data, with their
defaults. An experiment file overrides what differs."""

import ml_collections

# Logical axis (blip_jax/models/layers.py) -> mesh axes (data, fsdp, tensor); flax lm1b style, the
# only copy of the table. The batch is split over (data, fsdp); params over fsdp along "embed" and
# over tensor along head / MLP widths. "vocab" stays unsharded: 30524 is not divisible by 8, and
# sharding it over "tensor" on a (2,2,2) CPU mesh gave word-embedding gradients off by ~0.08 from
# one device (gather/scatter partitioning), while every other rule agrees to float32 rounding. The
# table is still split over fsdp through "embed".
SHARDING_RULES = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("kv_embed", "fsdp"),
  ("patch", None),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("qkv", "tensor"),
  ("vocab", None),
  ("embed_out", "tensor"),
  ("proj", None),
  ("classes", None),
  ("positions", None),
)


def data(sources, tokenizer, scale=(0.2, 1.0)):
  """config.data: sources (see blip_jax.data.sources.make_source; each may carry "weight"), tokenizer
  (see blip_jax.train.inputs), loader settings and augmentation (reference section 6)."""
  return ml_collections.ConfigDict(
    dict(
      sources=tuple(sources),
      tokenizer=dict(tokenizer),
      workers=0,  # grain worker processes per host; 0 = reader threads in the training process
      threads=4,
      prefetch=2,
      seed=0,
      max_skip_fraction=0.01,  # stop when more than this fraction of examples is unreadable
      max_image_pixels=89_478_485,  # larger images are skipped as decompression bombs (PIL's default)
      scale=tuple(scale),
      flip=True,
      randaug=True,
    )
  )


def run(c, *, log_every=50, checkpoint_every=1000, eval_every=0, eval_sources=(), eval_num=256, eval_batch=64):
  """Run-level keys on config c (in place)."""
  c.seed = 0
  c.total_steps = 0  # 0: epochs * num_examples // global_batch
  c.log_every = log_every
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.tensorboard = True
  c.init_from = ""  # a Salesforce .pth, HF directory or blip_jax checkpoint; used when the workdir has none
  c.preemption_check_every = 10  # steps between the processes' agreement on a SIGTERM (multi-host only)
  c.debug_nan_at_step = -1  # test hook: feed NaN images at this step
  c.prompt = ""  # captioning: the decoder prompt, "a picture of " (masked from the LM targets)
  c.eval = ml_collections.ConfigDict(
    dict(
      sources=tuple(eval_sources),
      num=eval_num,  # images (0 = all)
      batch=eval_batch,
      every=eval_every,  # steps between evaluations (0 = at the end only); the best model is kept
      max_captions=10,  # reference captions per image (Karpathy COCO: 5 to 7), answers per VQA question (10)
      k_test=256,  # retrieval: candidates re-ranked by ITM per query (COCO 256, Flickr 128)
      num_beams=3,  # captioning: beam search (1 = greedy)
      max_length=20,  # captioning: counts [DEC] and the prompt, as the official code
      min_length=5,
      meteor=False,  # captioning: also METEOR (a Java subprocess; skipped without java)
    )
  )
  return c


def finetune(c, *, train, eval_sources, vocab, init_from, epochs, num_examples, eval_batch, eval_every):
  """The keys every paper fine-tuning config shares (the official configs/*.yaml; reference s.7), on
  config c (in place): global batch 256 (32 per GPU x 8), AdamW wd 0.05 with a per-epoch cosine from
  1e-5 to 0, crops of scale (0.5, 1), BERT's wordpiece vocabulary, the whole eval split."""
  c.global_batch = 256
  c.num_examples = num_examples
  c.epochs = epochs
  c.accum_steps = 1
  c.optimizer = ml_collections.ConfigDict(
    dict(schedule="cosine", peak_lr=1e-5, min_lr=0.0, weight_decay=0.05, decay_mode="all", clip_norm=0.0)
  )
  c.mesh = (-1, 1, 1)
  c.sharding_rules = SHARDING_RULES
  c.data = data(train, dict(type="wordpiece", vocab=vocab), scale=(0.5, 1.0))
  run(c, log_every=50, checkpoint_every=1000, eval_every=eval_every, eval_sources=eval_sources, eval_num=0)
  c.eval.batch = eval_batch
  c.init_from = init_from
  return c

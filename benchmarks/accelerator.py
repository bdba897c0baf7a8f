"""One prepared accelerator run: the ViT-B pretraining step (bf16 compute, f32 params) and captioning
(beam 3, 20 tokens) at batch 64, printing pairs/s or captions/s, achieved TFLOP/s (analytic matmul
FLOPs, blip_jax/train/flops.py) and MFU against the chip's dense bf16 peak (blip_jax/train/chips.py).

  python -m benchmarks.accelerator [--size full|tiny] [--batch 64] [--steps 10] [--parts step,caption]

On a GPU or TPU the default is ViT-B + BERT-base at 224 px for the step (the paper's pretraining
resolution) and 384 px for captioning. On CPU it runs `--size tiny` (a smoke run: numbers mean
nothing there; the CPU benchmarks are pretrain_step.py and generate.py). Every device of the host is
used, the batch split over a (data,) mesh.
"""

from __future__ import annotations

import argparse
import time


def parse(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--size", choices=("full", "tiny"), default=None, help="default: full on GPU/TPU, tiny on CPU")
  p.add_argument("--batch", type=int, default=64, help="global batch (pairs per step; images per caption call)")
  p.add_argument("--steps", type=int, default=10, help="timed steps / caption calls after one warm-up")
  p.add_argument("--parts", default="step,caption")
  return p.parse_args(argv)


def _timed(fn, n):
  import jax

  jax.block_until_ready(fn())  # compile + first call
  t = time.perf_counter()
  out = None
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n


def bench_step(c, batch, steps, mesh):
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding, PartitionSpec

  from blip_jax.tasks.pretrain import Objective, init_state, make_train_step
  from blip_jax.train.flops import pretrain_step_flops
  from blip_jax.train.optimizer import make_optimizer

  length, queue = 30, 57600 if c.vision.width >= 768 else 4 * batch
  obj = Objective(queue_size=queue, alpha_ramp_steps=1)
  tx = make_optimizer(optax.constant_schedule(1e-5))
  replicated = NamedSharding(mesh, PartitionSpec())
  state = jax.jit(lambda: init_state(c, obj, tx, jax.random.key(0)), out_shardings=replicated)()
  rows = NamedSharding(mesh, PartitionSpec("data"))
  s = c.vision.image_size
  ids = jnp.full((batch, length), 1500, jnp.int32).at[:, 0].set(101)
  data = {
    "images": jax.device_put(jax.random.normal(jax.random.key(1), (batch, s, s, 3)), rows),
    "ids": jax.device_put(ids, rows),
    "mask": jax.device_put(jnp.ones((batch, length), jnp.int32), rows),
  }
  step = jax.jit(make_train_step(c, obj, tx), donate_argnums=0)
  box = [state]

  def one():
    box[0], m = step(box[0], data)
    return m

  sec = _timed(one, steps)
  return sec, pretrain_step_flops(c, batch, length, queue)


def bench_caption(c, batch, steps, mesh):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from blip_jax.generate.search import generate
  from blip_jax.models import Blip
  from blip_jax.models.blip import init_params
  from blip_jax.train import flops

  params = jax.jit(lambda: init_params(c, jax.random.key(0)))()
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  s = c.vision.image_size
  images = jax.device_put(
    jax.random.normal(jax.random.key(1), (batch, s, s, 3)), NamedSharding(mesh, PartitionSpec("data"))
  )
  prompt = jnp.asarray([1037, 3861, 1997], jnp.int32)
  opts = (("max_length", 20), ("min_length", 5), ("num_beams", 3))

  @jax.jit
  def caption(p, x):
    img = Blip(c).apply({"params": p}, x, method=Blip.encode_image)
    return generate(p, c.text, img, prompt, method="beam", options=opts)

  sec = _timed(lambda: caption(params, images), steps)
  # ViT forward plus, per generated position, the decoder on 3 beams (one token, K/V cached): a floor
  per_token = flops.text_forward(c, 3 * batch, 1, True, True, kv_images=0)
  return sec, flops.vit_forward(c, batch) + 17 * per_token


def main(argv=None):
  a = parse(argv)
  import jax
  import numpy as np

  from blip_jax.models import BlipConfig, tiny
  from blip_jax.models.config import vit_b16
  from blip_jax.train import chips

  dev = jax.devices()
  kind = dev[0].device_kind
  size = a.size or ("tiny" if dev[0].platform == "cpu" else "full")
  mesh = jax.sharding.Mesh(np.asarray(dev), ("data",))
  peak = chips.device_peak(kind)
  print(f"{len(dev)} x {kind} ({dev[0].platform}), peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
  if a.batch % len(dev):
    raise SystemExit(f"--batch {a.batch} is not divisible by the {len(dev)} devices")
  for part in a.parts.split(","):
    if part == "step":
      c = BlipConfig(task="pretrain", dtype="bfloat16") if size == "full" else tiny("pretrain", image_size=64)
      c = c.replace(dtype="bfloat16")
      sec, fl = bench_step(c, a.batch, a.steps, mesh)
      unit = "pairs/s"
    elif part == "caption":
      c = BlipConfig(task="caption", vision=vit_b16(384)) if size == "full" else tiny("caption", image_size=64)
      c = c.replace(dtype="bfloat16")
      sec, fl = bench_caption(c, a.batch, a.steps, mesh)
      unit = "captions/s"
    else:
      raise SystemExit(f"--parts: unknown part {part!r} (step, caption)")
    tflops = fl / sec / 1e12 / len(dev)
    mfu = f"{100 * tflops * 1e12 / peak:.1f}% MFU" if peak else "MFU n/a (unknown peak)"
    print(f"{part:8s} {size}: {sec * 1e3:9.1f} ms  {a.batch / sec:9.1f} {unit}  {tflops:7.2f} TFLOP/s per chip  {mfu}")


if __name__ == "__main__":
  main()

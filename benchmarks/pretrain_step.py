"""Pretraining step throughput: blip_jax vs a PyTorch eager reference of the same three-loss step
(benchmarks/torch_reference.py, built from transformers' BLIP modules), same config, same run.

  python -m benchmarks.pretrain_step [--configs tiny,vit_b] [--batch 4] [--steps 3] [--threads 2]

Prints pairs/s, achieved GFLOP/s (analytic matmul FLOPs of the step as run, blip_jax/train/flops.py,
for both sides: they do the same work) and that as a fraction of the float32 matmul peak measured in
this run (best of torch and XLA on a 4096^2 matmul), plus our/torch ratios. Settings: ours fp32 and
bf16 compute (fp32 params/optimizer/losses); torch fp32 and bf16 autocast. "best" = each side's
fastest. Run it alone: the CPU is shared with anything else running.

Ours at bf16 runs in a child process with blip_jax's CPU bf16 XLA flags (blip_jax/cpu_bf16.py: XLA
reads them once per process, and blip_jax sets them only for bf16 runs), as `blip_jax.train` does.
"""

from __future__ import annotations

import argparse
import time


def parse():
  p = argparse.ArgumentParser()
  p.add_argument("--configs", default="tiny,vit_b")
  p.add_argument("--batch", type=int, default=4, help="pairs per step for vit_b (tiny uses 16)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--text-length", type=int, default=30)
  p.add_argument("--only-ours", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)  # the child run
  return p.parse_args()


ARGS = parse()
if ARGS.only_ours:
  from blip_jax import cpu_bf16

  cpu_bf16.enable(ARGS.only_ours)  # before jax starts its backend
# XLA:CPU uses every core of the machine (2 here); torch is set to --threads below.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from benchmarks.torch_reference import BlipPretrainTorch  # noqa: E402
from blip_jax.models import BlipConfig, tiny  # noqa: E402
from blip_jax.tasks.pretrain import Objective, init_state, make_train_step  # noqa: E402
from blip_jax.train.flops import pretrain_step_flops  # noqa: E402
from blip_jax.train.optimizer import make_optimizer  # noqa: E402

torch.set_num_threads(ARGS.threads)


def _rate(fn, n, reps):
  fn()
  t = time.perf_counter()
  for _ in range(reps):
    fn()
  return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def matmul_peak(n=4096, reps=5) -> float:
  """Best float32 matmul GFLOP/s of torch and XLA on this machine, now (bf16 printed for context:
  where the CPU has AMX, torch's oneDNN uses it and XLA:CPU does not)."""
  rates = {}
  for name, tdt, jdt in (("float32", torch.float32, jnp.float32), ("bfloat16", torch.bfloat16, jnp.bfloat16)):
    a = torch.randn(n, n).to(tdt)
    x = jnp.asarray(torch.randn(n, n).numpy()).astype(jdt)
    f = jax.jit(lambda m: m @ m)
    rates[name] = (_rate(lambda: torch.mm(a, a), n, reps), _rate(lambda: f(x).block_until_ready(), n, reps))
    print(f"{name} matmul {n}^2: torch {rates[name][0]:.0f} GFLOP/s, XLA {rates[name][1]:.0f} GFLOP/s")
  return max(rates["float32"])


def batch_np(c: BlipConfig, b: int, length: int):
  rng = np.random.default_rng(0)
  s = c.vision.image_size
  ids = rng.integers(1000, 2000, (b, length))
  ids[:, 0] = 101
  mask = np.ones((b, length), np.int64)
  mask[b // 2 :, length - 5 :] = 0
  return rng.normal(size=(b, s, s, 3)).astype(np.float32), ids, mask


def time_ours(c: BlipConfig, b: int, length: int, queue: int, steps: int, dtype: str) -> float:
  c = c.replace(dtype=dtype)
  obj = Objective(queue_size=queue, alpha_ramp_steps=1)
  tx = make_optimizer(optax.constant_schedule(1e-5))
  state = init_state(c, obj, tx, jax.random.key(0))
  images, ids, mask = batch_np(c, b, length)
  batch = {"images": jnp.asarray(images), "ids": jnp.asarray(ids, jnp.int32), "mask": jnp.asarray(mask, jnp.int32)}
  step = jax.jit(make_train_step(c, obj, tx), donate_argnums=0)
  t = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  print(f"    compile + first step {time.perf_counter() - t:.1f} s")
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return (time.perf_counter() - t) / steps


def time_torch(c: BlipConfig, b: int, length: int, queue: int, steps: int, bf16: bool) -> float:
  torch.manual_seed(0)
  model = BlipPretrainTorch(c, queue).train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)
  images, ids, mask = batch_np(c, b, length)
  image = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)

  def one():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      losses = model(image, ids_t, mask_t)
    loss = sum(losses)
    opt.zero_grad()
    loss.backward()
    opt.step()

  one()
  t = time.perf_counter()
  for _ in range(steps):
    one()
  return (time.perf_counter() - t) / steps


def setting(name: str):
  if name == "tiny":
    return tiny("pretrain", image_size=64, vision_width=128, text_width=128), 16, 64
  if name == "vit_b":
    return BlipConfig(task="pretrain"), ARGS.batch, 57600
  raise ValueError(f"--configs: unknown config {name!r} (tiny, vit_b)")


def time_ours_in_child(name: str, dtype: str) -> float:
  """time_ours in a fresh process (its own XLA flags); returns s/step."""
  import subprocess
  import sys

  argv = [sys.executable, "-m", "benchmarks.pretrain_step", "--configs", name, "--only-ours", dtype]
  argv += ["--batch", str(ARGS.batch), "--steps", str(ARGS.steps), "--text-length", str(ARGS.text_length)]
  out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()
  print("\n".join(out[:-1]))
  return float(out[-1])


def main():
  if ARGS.only_ours:
    c, b, queue = setting(ARGS.configs)
    print(time_ours(c, b, ARGS.text_length, queue, ARGS.steps, ARGS.only_ours))
    return
  peak = matmul_peak()
  for name in ARGS.configs.split(","):
    c, b, queue = setting(name)
    ours_flops = pretrain_step_flops(c, b, ARGS.text_length, queue)
    torch_flops = pretrain_step_flops(c, b, ARGS.text_length, queue, shared_itm_kv=False)
    print(
      f"\n== {name}: batch {b}, text {ARGS.text_length}, queue {queue}, {ARGS.threads} threads; "
      f"analytic TFLOP per step: ours {ours_flops / 1e12:.3f} (ITM K/V once per image), "
      f"official/torch {torch_flops / 1e12:.3f} =="
    )
    results = {}
    for label, fn in [
      ("ours fp32", lambda: time_ours(c, b, ARGS.text_length, queue, ARGS.steps, "float32")),
      ("ours bf16", lambda: time_ours_in_child(name, "bfloat16")),
      ("torch fp32", lambda: time_torch(c, b, ARGS.text_length, queue, ARGS.steps, False)),
      ("torch bf16 autocast", lambda: time_torch(c, b, ARGS.text_length, queue, ARGS.steps, True)),
    ]:
      print(f"  {label} ...")
      s = fn()
      results[label] = s
      g = (ours_flops if label.startswith("ours") else torch_flops) / s / 1e9
      print(f"  {label:22s} {s:8.3f} s/step {b / s:8.2f} pairs/s {g:8.1f} GFLOP/s  {100 * g / peak:5.1f}% of peak")
    ours_best = min(results["ours fp32"], results["ours bf16"])
    torch_best = min(results["torch fp32"], results["torch bf16 autocast"])
    print(f"  ratio fp32 (ours/torch speed): {results['torch fp32'] / results['ours fp32']:.2f}x")
    print(
      f"  ratio best (ours {min(results, key=lambda k: results[k] if k.startswith('ours') else 1e9)} "
      f"vs torch {min(results, key=lambda k: results[k] if k.startswith('torch') else 1e9)}): "
      f"{torch_best / ours_best:.2f}x"
    )


if __name__ == "__main__":
  main()

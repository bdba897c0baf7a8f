"""Captioning speed: ours vs transformers' BlipForConditionalGeneration.generate on identical weights
(ViT-B/16 at 384 px + BERT-base, random init imported into blip_jax), beam 3, max_length 20,
min_length 5, at batch 1 and 16. Image encoding, decoding and end to end are timed separately, in the
same run, after a warm-up (compile) call; figures are medians over --repeats.

The HF model is built from our own config (`interop.hf.hf_config`: BLIP's 12 text heads, vision eps
1e-6), not transformers' default BlipConfig (8 heads, eps 1e-5), and its random weights are made
decisive (sharper logits, stronger image dependence) so that both sides must produce the same tokens.
Speed is only ever compared on identical output: the float32 run raises if any token differs.

  python -m benchmarks.generate [--batches 1 16] [--repeats 3] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.generate.search import generate
from blip_jax.models import Blip
from blip_jax.models.config import BlipConfig, vit_b16
from blip_jax.train import flops

OPTS = (("max_length", 20), ("min_length", 5), ("num_beams", 3))
PROMPT = [1037, 3861, 1997]  # "a picture of" (a list: nothing may start jax's backend at import)


def median_time(fn, repeats):
  out, times = None, []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def decisive(hf):
  """Random BLIP weights give near-uniform next-token logits, where float noise alone can flip a beam.
  Scale the decoder's word embeddings (sharper logits) and its cross-attention value / output (each
  image its own caption), as tests/test_generate.py does. Returns the model, changed in place."""
  import torch

  with torch.no_grad():
    hf.text_decoder.bert.embeddings.word_embeddings.weight.mul_(6.0)
    for name, p in hf.text_decoder.named_parameters():
      if "crossattention.self.value.weight" in name or "crossattention.output.dense.weight" in name:
        p.mul_(4.0)
  return hf


def same_tokens(ids, lengths, hf):
  """ids [B, L] and lengths [B] (ours, fixed length) vs HF's [B, L'] (HF stops when every row is done,
  so L' is the longest caption): equal when the first L' columns match and no caption of ours is longer."""
  n = hf.shape[1]
  return n <= ids.shape[1] and np.array_equal(ids[:, :n], hf) and int(lengths.max()) == n


def build_models():
  """(HF model, our config, our params): the same decisive random weights on both sides."""
  import torch
  import transformers

  from blip_jax.interop import import_state_dict
  from blip_jax.interop.hf import hf_config

  config = BlipConfig(task="caption", vision=vit_b16(384))  # ViT-B 384 + BERT-base, BLIP's settings
  torch.manual_seed(0)
  hf = decisive(transformers.BlipForConditionalGeneration(transformers.BlipConfig(**hf_config(config))).eval())
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  params = jax.device_put(import_state_dict(sd, "caption", "hf", config=config).params)
  return hf, config, params


def images_of(b: int) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(b, 384, 384, 3)).astype(np.float32)


def time_ours(config, params, images, dtype: str, repeats: int):
  """(encode s, decode s, ids, lengths) of our jitted encode + beam search, medians after a warm-up."""
  cfg = config.replace(dtype=dtype)
  encode = jax.jit(lambda p, x: Blip(cfg).apply({"params": p}, x, method=Blip.encode_image))
  p_run = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params) if dtype == "bfloat16" else params
  x = jnp.asarray(images)
  run = lambda img: jax.block_until_ready(
    generate(p_run, cfg.text, img, jnp.asarray(PROMPT, jnp.int32), method="beam", options=OPTS)
  )
  run(jax.block_until_ready(encode(p_run, x)))  # compile both
  enc, img = median_time(lambda: jax.block_until_ready(encode(p_run, x)), repeats)
  dec, out = median_time(lambda: run(img), repeats)
  return enc, dec, np.asarray(out[0]), np.asarray(out[1])


def bf16_in_child(batches, repeats) -> dict:
  """Ours at bf16 in a fresh process, with blip_jax's CPU bf16 XLA flags (read once per process, and
  they can slow the small float32 dots of decoding, so the float32 run here goes without them)."""
  import json
  import subprocess
  import sys

  argv = [sys.executable, "-m", "benchmarks.generate", "--child-bf16", "--repeats", str(repeats), "--batches"]
  out = subprocess.run(argv + [str(b) for b in batches], capture_output=True, text=True, check=True).stdout
  return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def child_bf16(batches, repeats):
  import json

  from blip_jax import cpu_bf16

  cpu_bf16.enable("bfloat16")  # before the backend starts
  _, config, params = build_models()
  res = {}
  for b in batches:
    enc, dec, ids, lengths = time_ours(config, params, images_of(b), "bfloat16", repeats)
    res[b] = (enc, dec, ids.tolist(), lengths.tolist())
  print(json.dumps(res))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--bf16", action="store_true", help="also time ours with bfloat16 compute (in a child process)")
  ap.add_argument("--child-bf16", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.child_bf16:
    return child_bf16(a.batches, a.repeats)
  import torch

  bf16 = bf16_in_child(a.batches, a.repeats) if a.bf16 else {}
  hf, config, params = build_models()
  hf_prompt = [101] + PROMPT + [102]
  print(f"threads: torch {torch.get_num_threads()}; jax devices {jax.devices()}")
  print(f"{'batch':>5} {'part':>10} {'HF s':>8} {'ours s':>8} {'speed-up':>8}  notes")
  for b in a.batches:
    images = images_of(b)
    px = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.tensor([hf_prompt] * b)
    with torch.no_grad():
      hf_enc, _ = median_time(lambda: hf.vision_model(pixel_values=px), a.repeats)
      hf_e2e, hf_out = median_time(
        lambda: hf.generate(pixel_values=px, input_ids=ids, num_beams=3, max_length=20, min_length=5), a.repeats
      )
    hf_out = hf_out.numpy()
    enc, dec, out_ids, lengths = time_ours(config, params, images, "float32", a.repeats)
    if not same_tokens(out_ids, lengths, hf_out):
      raise RuntimeError(
        f"batch {b}: our float32 tokens differ from HF's, so the timings would compare different work:\n"
        f"ours {out_ids.tolist()}\nHF   {hf_out.tolist()}"
      )
    hf_dec = hf_e2e - hf_enc
    vit_gflops = flops.vit_forward(config, b) / 1e9
    print(
      f"{b:>5} {'encode':>10} {hf_enc:>8.2f} {enc:>8.2f} {hf_enc / enc:>7.2f}x  "
      f"ViT {vit_gflops:.0f} GFLOP: HF {vit_gflops / hf_enc:.0f}, ours {vit_gflops / enc:.0f} GFLOP/s"
    )
    print(f"{b:>5} {'decode':>10} {hf_dec:>8.2f} {dec:>8.2f} {hf_dec / dec:>7.2f}x  tokens equal to HF: True")
    print(
      f"{b:>5} {'end2end':>10} {hf_e2e:>8.2f} {enc + dec:>8.2f} {hf_e2e / (enc + dec):>7.2f}x  "
      f"{b / (enc + dec):.2f} captions/s (HF {b / hf_e2e:.2f})"
    )
    if b in bf16:
      e16, d16, ids16, len16 = bf16[b]
      same16 = same_tokens(np.asarray(ids16), np.asarray(len16), hf_out)
      for part, h, o in (("enc bf16", hf_enc, e16), ("dec bf16", hf_dec, d16), ("e2e bf16", hf_e2e, e16 + d16)):
        print(f"{b:>5} {part:>10} {h:>8.2f} {o:>8.2f} {h / o:>7.2f}x", end="")
        print(f"  tokens equal to HF: {same16} (bf16 rounding may flip a close beam)" if part == "e2e bf16" else "")


if __name__ == "__main__":
  main()

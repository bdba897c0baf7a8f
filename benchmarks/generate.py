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


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--bf16", action="store_true", help="also time ours with bfloat16 compute")
  a = ap.parse_args(argv)
  import torch
  import transformers

  from blip_jax.interop import import_state_dict
  from blip_jax.interop.hf import hf_config

  config = BlipConfig(task="caption", vision=vit_b16(384))  # ViT-B 384 + BERT-base, BLIP's settings
  torch.manual_seed(0)
  hf = decisive(transformers.BlipForConditionalGeneration(transformers.BlipConfig(**hf_config(config))).eval())
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  params = import_state_dict(sd, "caption", "hf", config=config).params
  params = jax.device_put(params)
  prompt = jnp.asarray([1037, 3861, 1997], jnp.int32)  # "a picture of"
  hf_prompt = [101, 1037, 3861, 1997, 102]
  print(f"threads: torch {torch.get_num_threads()}; jax devices {jax.devices()}")
  print(f"{'batch':>5} {'part':>10} {'HF s':>8} {'ours s':>8} {'speed-up':>8}  notes")
  for b in a.batches:
    images = np.random.default_rng(0).normal(size=(b, 384, 384, 3)).astype(np.float32)
    px = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.tensor([hf_prompt] * b)
    with torch.no_grad():
      hf_enc, _ = median_time(lambda: hf.vision_model(pixel_values=px), a.repeats)
      hf_e2e, hf_out = median_time(
        lambda: hf.generate(pixel_values=px, input_ids=ids, num_beams=3, max_length=20, min_length=5), a.repeats
      )
    results = {}
    for dtype in ["float32"] + (["bfloat16"] if a.bf16 else []):
      cfg = config.replace(dtype=dtype)
      encode = jax.jit(lambda p, x, cfg=cfg: Blip(cfg).apply({"params": p}, x, method=Blip.encode_image))
      cast = (lambda p: jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)) if dtype == "bfloat16" else (lambda p: p)
      p_run = cast(params)
      x = jnp.asarray(images)
      img = jax.block_until_ready(encode(p_run, x))  # compile
      jax.block_until_ready(generate(p_run, cfg.text, img, prompt, method="beam", options=OPTS))
      enc, img = median_time(lambda: jax.block_until_ready(encode(p_run, x)), a.repeats)
      dec, out = median_time(
        lambda: jax.block_until_ready(generate(p_run, cfg.text, img, prompt, method="beam", options=OPTS)), a.repeats
      )
      same = same_tokens(np.asarray(out[0]), np.asarray(out[1]), hf_out.numpy())
      if dtype == "float32" and not same:
        raise RuntimeError(
          f"batch {b}: our float32 tokens differ from HF's, so the timings would compare different work:\n"
          f"ours {np.asarray(out[0]).tolist()}\nHF   {hf_out.numpy().tolist()}"
        )
      results[dtype] = (enc, dec, same)
    hf_dec = hf_e2e - hf_enc
    enc, dec, same = results["float32"]
    vit_gflops = flops.vit_forward(config, b) / 1e9
    print(
      f"{b:>5} {'encode':>10} {hf_enc:>8.2f} {enc:>8.2f} {hf_enc / enc:>7.2f}x  "
      f"ViT {vit_gflops:.0f} GFLOP: HF {vit_gflops / hf_enc:.0f}, ours {vit_gflops / enc:.0f} GFLOP/s"
    )
    print(f"{b:>5} {'decode':>10} {hf_dec:>8.2f} {dec:>8.2f} {hf_dec / dec:>7.2f}x  tokens equal to HF: {same}")
    print(
      f"{b:>5} {'end2end':>10} {hf_e2e:>8.2f} {enc + dec:>8.2f} {hf_e2e / (enc + dec):>7.2f}x  "
      f"{b / (enc + dec):.2f} captions/s (HF {b / hf_e2e:.2f})"
    )
    if "bfloat16" in results:
      e16, d16, same16 = results["bfloat16"]
      print(
        f"{b:>5} {'e2e bf16':>10} {hf_e2e:>8.2f} {e16 + d16:>8.2f} {hf_e2e / (e16 + d16):>7.2f}x  "
        f"encode {e16:.2f} s, decode {d16:.2f} s; tokens equal to HF: {same16}"
      )


if __name__ == "__main__":
  main()

"""CapFilt at pod scale without the pod: compile the job's two device functions (the captioner's
encode + nucleus sampling, the filter's encode + ITM over each image's texts) for a TPU topology on
this CPU, and report per-chip memory and an images/s estimate from the analytic FLOPs.

  python -m blip_jax.capfilt --dry_run --topology v5p:4x4x4 [--dry_run_model vit_b16|vit_l16]
      [--batch 32] [--num_captions 1] [--dtype bfloat16] --config ... (the other flags as the job)

The two functions below restate what `inference.BlipModel` jits for the job (`caption_pixels` with
sample=True, `itm_pairs`) on abstract params, since BlipModel needs loaded weights; keep them in step
with it. Each chip holds a replica of both models and `batch` images (data parallel, as the job's hosts
read their own shards).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from blip_jax.generate.search import generate
from blip_jax.models.blip import Blip, param_shapes
from blip_jax.models.config import BlipConfig, vit_b16, vit_l16
from blip_jax.train import chips
from blip_jax.train.flops import text_forward, vit_forward

MODELS = {"vit_b16": vit_b16, "vit_l16": vit_l16}
ASSUMED_MFU = 0.3  # decoding is memory-bound: a conservative share of peak for the estimate


def capfilt_flops(captioner: BlipConfig, filt: BlipConfig, images: int, max_length: int, num_captions: int) -> float:
  """Matmul FLOPs of CapFilt on `images` images: the captioner's ViT and num_captions decodes of
  max_length tokens (counted as one full-length forward each, an upper bound of the cached decode), the
  filter's ViT and ITM over the web text + the synthetic captions (K/V projected once per image)."""
  texts = images * (1 + num_captions)
  return (
    vit_forward(captioner, images)
    + text_forward(captioner, images * num_captions, max_length, True, True, kv_images=images)
    + vit_forward(filt, images)
    + text_forward(filt, texts, max_length, True, False, kv_images=images)
  )


def _abstract(config: BlipConfig, sharding, dtype):
  """ShapeDtypeStructs of the params as the job holds them (cast to the compute dtype, replicated)."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sharding), param_shapes(config))


def configs(model: str, image_size: int, dtype: str = "bfloat16") -> tuple[BlipConfig, BlipConfig]:
  """(captioner, filter) configs of a paper-size CapFilt pair: "vit_b16" or "vit_l16" at image_size."""
  if model not in MODELS:
    raise ValueError(f"model={model!r}: must be one of {sorted(MODELS)}")
  vision = MODELS[model](image_size)
  return BlipConfig(task="caption", vision=vision, dtype=dtype), BlipConfig(
    task="retrieval", vision=vision, dtype=dtype
  )


def compile_capfilt(
  cap_cfg: BlipConfig,
  filt_cfg: BlipConfig,
  devices,
  *,
  batch: int,
  max_length: int = 30,
  min_length: int = 10,
  prompt_length: int = 4,
  num_captions: int = 1,
) -> dict:
  """Compile both functions for `devices` (data parallel, `batch` images per device; params replicated
  in the configs' compute dtype, as the job casts them). Returns a report:
  per function its argument / temporary / total bytes per device, plus FLOPs per image, the chip's
  peak and HBM, and the images/s per chip estimate at ASSUMED_MFU."""
  compute = jnp.dtype(cap_cfg.dtype)
  image_size = cap_cfg.vision.image_size
  if filt_cfg.vision.image_size != image_size:
    raise ValueError(f"captioner ({image_size} px) and filter ({filt_cfg.vision.image_size} px) read the same pixels")
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  n = batch * len(devices)
  pixels = jax.ShapeDtypeStruct((n, image_size, image_size, 3), compute, sharding=rows)
  options = tuple(
    sorted(
      dict(
        num_samples=num_captions,
        top_p=0.9,
        top_k=50,
        temperature=1.0,
        max_length=max_length,
        min_length=min_length,
        repetition_penalty=1.0,
        with_scores=True,
      ).items()
    )
  )
  prompt = np.full((prompt_length,), 1000, np.int32)  # token values do not matter to the compiler

  def caption(params, pixels, seed):
    img = Blip(cap_cfg).apply({"params": params}, pixels, method=Blip.encode_image)
    rng = jax.random.key(seed)
    return generate(params, cap_cfg.text, img, prompt, rng, method="sample", options=options)

  t = 1 + num_captions

  def itm(params, pixels, ids, mask):
    blip = Blip(filt_cfg)
    img = blip.apply({"params": params}, pixels, method=Blip.encode_image)
    index = jnp.repeat(jnp.arange(pixels.shape[0]), t)
    logits = blip.apply({"params": params}, ids, mask, img, method=Blip.itm_logits, image_index=index)
    return jax.nn.softmax(logits.astype(jnp.float32), -1)[:, 1]

  texts = jax.ShapeDtypeStruct((n * t, max_length), jnp.int32, sharding=rows)
  report = {"devices": len(devices), "device_kind": devices[0].device_kind, "batch_per_device": batch}
  cap_params, filt_params = _abstract(cap_cfg, replicated, compute), _abstract(filt_cfg, replicated, compute)
  seed = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = {
      "caption": jax.jit(caption).lower(cap_params, pixels, seed).compile(),
      "filter": jax.jit(itm).lower(filt_params, pixels, texts, texts).compile(),
    }
  report["compile_s"] = time.time() - t0
  for name, c in compiled.items():
    mem = c.memory_analysis()
    if mem is not None:
      report[name] = dict(
        argument_bytes=mem.argument_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        total_bytes=mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes,
      )
  report["flops_per_image"] = capfilt_flops(cap_cfg, filt_cfg, 1, max_length, num_captions)
  report["peak_flops"] = chips.device_peak(report["device_kind"])
  report["hbm_bytes"] = chips.device_hbm(report["device_kind"])
  if report["peak_flops"]:
    report["images_per_s_per_chip"] = ASSUMED_MFU * report["peak_flops"] / report["flops_per_image"]
  return report


def format_report(r: dict, dataset_images: int = 129_000_000) -> str:
  """The report as text, with the wall time of `dataset_images` images on r's chips."""
  gib = lambda x: f"{x / 2**30:.2f} GiB"
  lines = [f"CapFilt dry run: {r['devices']} x {r['device_kind']}, {r['batch_per_device']} images per chip per call"]
  lines.append(f"compile time       {r['compile_s']:.1f} s")
  for name in ("caption", "filter"):
    if name in r:
      m = r[name]
      used = f" ({100 * m['total_bytes'] / r['hbm_bytes']:.0f}% of {gib(r['hbm_bytes'])})" if r["hbm_bytes"] else ""
      lines.append(
        f"{name:<8s} per chip: arguments {gib(m['argument_bytes'])}, temporaries {gib(m['temp_bytes'])}, "
        f"total {gib(m['total_bytes'])}{used}"
      )
  lines.append(f"FLOPs per image    {r['flops_per_image'] / 1e9:.1f} GFLOP (captioner + filter, analytic)")
  if "images_per_s_per_chip" in r:
    per_chip = r["images_per_s_per_chip"]
    hours = dataset_images / (per_chip * r["devices"]) / 3600
    lines.append(
      f"estimate           {per_chip:,.0f} images/s per chip at {ASSUMED_MFU:.0%} of peak; "
      f"{dataset_images / 1e6:.0f}M images on {r['devices']} chips: {hours:.1f} h"
    )
  return "\n".join(lines)

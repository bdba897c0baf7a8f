"""CapFilt (reference s.8): bootstrap a cleaner pretraining set with a captioner and a filter.

  python -m blip_jax.capfilt --config experiments/<pretraining config>.py[:variant] \
      --captioner CKPT --filter CKPT --out DIR [--method nucleus|beam] [--num-captions 1] [--top-p 0.9]
      [--threshold 0.5] [--shard-size 2048] [--batch 32] [--dtype bfloat16] [--config.key=value ...]
  python -m blip_jax.capfilt --config ... --dry_run --topology v5p:4x4x4 [--dry_run_model vit_l16]
      (compile the job for a pod slice here and print per-chip memory and images/s: capfilt_compile.py)

For every example of config.data.sources (json, TFDS or synthetic), in order:
  - the captioner (an LM fine-tune) writes --num-captions synthetic captions: nucleus sampling (top_p
    0.9, the paper's choice) or beam search (Table 2's ablation); the prompt is stripped;
  - the filter (an ITC + ITM fine-tune) scores the web text and every synthetic caption by ITM match
    probability ([ENC] first); those below --threshold (0.5) are dropped;
  - a source marked "human": True (human-annotated, e.g. COCO) passes untouched.
Output: DIR/shards/*.json, BLIP pretraining json (`[{"image", "caption", "origin": web | synthetic |
human, "itm", "image_id", "clean"?}]`, image paths absolute; images of sources without files (synthetic,
TFDS) written under DIR/images); DIR/scores/*.json, every scored text in the same form, kept or not (so
another threshold, or the paper's "captioner only" / "filter only" sets, need no second pass:
`select()`); and DIR/summary.json (kept / dropped per origin, ITM-probability histograms, and the
filter's precision / recall against a source's `clean` flags where it has them, as the synthetic world
does). Pretrain on it with `dict(type="json", ann=[DIR/shards/...], image_root="")` (`shards()` lists them).

Work is cut into shards of --shard-size examples; process p of P handles shards p, p + P, ...; each
shard is written atomically when done, so a preempted or killed job rerun with the same command skips
finished shards and ends with output identical to an uninterrupted run (sampling is seeded per shard).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from blip_jax.data.sources import BadExample, make_source
from blip_jax.data.text import pre_caption
from blip_jax.data.transforms import eval_transform

ORIGINS = ("web", "synthetic", "human")
HISTOGRAM_BINS = 20  # ITM probability histograms in the summary: bins of 0.05


def shards(out: str, kind: str = "shards") -> list[str]:
  """The finished shard files of a CapFilt output directory, in order: kept texts ("shards") or every
  scored text ("scores")."""
  d = os.path.join(out, kind)
  if not os.path.isdir(d):
    return []
  return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".json") and not f.endswith(".stats.json"))


def select(out: str, web: str = "filtered", synthetic: str = "filtered", threshold: float | None = None) -> list[dict]:
  """Records of a finished CapFilt output re-selected from its scores: each of `web` and `synthetic`
  "filtered" (ITM probability >= threshold; default: the job's own threshold), "all" (unfiltered) or
  "none". Human texts always pass. The paper's Table 1 rows: C+F = (filtered, filtered), captioner
  only = (all, all), filter only = (filtered, none)."""
  for name, rule in (("web", web), ("synthetic", synthetic)):
    if rule not in ("filtered", "all", "none"):
      raise ValueError(f"{name}={rule!r}: must be 'filtered', 'all' or 'none'")
  if threshold is None:
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
      raise ValueError(f"{summary}: no summary (the CapFilt job has not finished); pass threshold=")
    with open(summary) as f:
      threshold = json.load(f)["threshold"]
  rules = {"web": web, "synthetic": synthetic}
  picked = []
  for path in shards(out, "scores"):
    with open(path) as f:
      for item in json.load(f):
        rule = rules.get(item["origin"], "all")
        if rule == "all" or (rule == "filtered" and item["itm"] >= threshold):
          picked.append(item)
  return picked


class CapFilt:
  """The captioner + filter pair and the options of one CapFilt job."""

  def __init__(self, captioner, filt, *, method="nucleus", num_captions=1, top_p=0.9, threshold=0.5, **caption_kw):
    if method not in ("nucleus", "beam"):
      raise ValueError(f"method={method!r}: must be 'nucleus' or 'beam'")
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"threshold={threshold}: must be in [0, 1]")
    self.captioner, self.filter, self.threshold = captioner, filt, threshold
    self.caption_kw = dict(caption_kw, num_captions=num_captions)
    if method == "nucleus":
      self.caption_kw.update(sample=True, top_p=top_p)
    else:
      self.caption_kw.update(num_beams=max(3, num_captions))

  def shard(self, records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(kept records, every scored text) for records [{"pil", "caption", "image", "image_id", ...}]."""
    cap_px = np.stack([eval_transform(r["pil"], self.captioner.image_size) for r in records])
    synthetic = self.captioner.caption_pixels(cap_px, seed=seed, **self.caption_kw)
    filt_px = np.stack([eval_transform(r["pil"], self.filter.image_size) for r in records])
    texts = [[r["caption"]] + [c for c, _ in caps] for r, caps in zip(records, synthetic)]
    # a text with no words (an empty generated caption) cannot be scored: scored 0, so dropped
    empty = [[not pre_caption(t).strip() for t in row] for row in texts]
    filled = [[t if not e else "empty" for t, e in zip(row, es)] for row, es in zip(texts, empty)]
    probs = [np.where(es, 0.0, p) for p, es in zip(self.filter.itm_pairs(filt_px, filled), empty)]
    kept, scored = [], []
    for r, row, p in zip(records, texts, probs):
      for j, (text, prob) in enumerate(zip(row, p)):
        origin = "web" if j == 0 else "synthetic"
        item = {"image": r["image"], "caption": text, "origin": origin, "itm": float(prob), "image_id": r["image_id"]}
        if j == 0 and "clean" in r:
          item["clean"] = bool(r["clean"])
        scored.append(item)
        if prob >= self.threshold:
          kept.append(item)
    return kept, scored


def _records(source, k: int, start: int, stop: int, out: str) -> tuple[list[dict], int]:
  """Examples [start, stop) of source k with an absolute image path (written under out/images when
  the source has no file) and their caption; unreadable ones skipped and counted."""
  recs, skipped = [], 0
  for i in range(start, stop):
    try:
      r = source[i]
    except BadExample as e:
      print(f"skipped: {e}", file=sys.stderr)
      skipped += 1
      continue
    caption = r["caption"] if isinstance(r["caption"], str) else r["caption"][0]
    if hasattr(source, "image_paths"):
      image = os.path.abspath(source.image_paths(i)[0])
    else:
      image = os.path.abspath(os.path.join(out, "images", f"source{k}", f"{i:09d}.jpg"))
      os.makedirs(os.path.dirname(image), exist_ok=True)
      r["pil"][0].save(image, quality=95)
    image_id = r.get("image_id", i)
    item = {
      "pil": r["pil"][0],
      "caption": caption,
      "image": image,
      "image_id": image_id if isinstance(image_id, int) else i,
    }
    if "clean" in r:
      item["clean"] = r["clean"]
    recs.append(item)
  return recs, skipped


def run(cfg, job: CapFilt, out: str, shard_size: int, process_index: int = 0, process_count: int = 1, log=print):
  """Process this process's shards of every source in cfg.data.sources (skipping finished ones), then
  (process 0) write summary.json from every shard's stats. Returns the summary (None on other processes)."""
  for d in ("shards", "scores"):
    os.makedirs(os.path.join(out, d), exist_ok=True)
  plan = []
  for k, spec in enumerate(cfg.data.sources):
    spec = dict(spec)
    human = bool(spec.pop("human", False))
    source = make_source(spec, "pretrain")
    plan += [(k, source, human, s) for s in range(0, len(source), shard_size)]
  mine = [p for n, p in enumerate(plan) if n % process_count == process_index]
  for n, (k, source, human, start) in enumerate(mine):
    name = os.path.join(out, "shards", f"source{k}_{start // shard_size:06d}")
    if os.path.exists(name + ".json"):
      continue
    records, skipped = _records(source, k, start, min(start + shard_size, len(source)), out)
    if human:
      kept = scored = [
        {"image": r["image"], "caption": r["caption"], "origin": "human", "itm": 1.0, "image_id": r["image_id"]}
        for r in records
      ]
    else:
      kept, scored = job.shard(records, seed=k * 1_000_003 + start // shard_size) if records else ([], [])
    stats = _stats(scored, kept, job.threshold)
    stats["skipped_images"] = skipped
    _write_json(name + ".stats", stats)
    _write_json(os.path.join(out, "scores", os.path.basename(name)), scored)
    _write_json(name, kept)  # last: its presence marks the shard done
    log(f"shard {n + 1}/{len(mine)} (source {k}, examples {start}..): kept {len(kept)} of {len(scored)} texts")
  if process_count > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("capfilt shards written")
  if process_index != 0:
    return None
  summary = _summary(out, job.threshold)
  _write_json(os.path.join(out, "summary"), summary)
  return summary


def _stats(scored: list[dict], kept: list[dict], threshold: float) -> dict:
  out = {o: {"kept": 0, "dropped": 0} for o in ORIGINS}
  for item in scored:
    out[item["origin"]]["kept" if item["itm"] >= threshold or item["origin"] == "human" else "dropped"] += 1
  bins = lambda items: np.histogram([i["itm"] for i in items], HISTOGRAM_BINS, (0.0, 1.0))[0].tolist()
  out["itm_histogram"] = {o: bins([i for i in scored if i["origin"] == o]) for o in ("web", "synthetic")}
  web = [i for i in scored if i["origin"] == "web" and "clean" in i]
  if web:
    out["itm_histogram"]["web_clean"] = bins([i for i in web if i["clean"]])
    out["itm_histogram"]["web_noisy"] = bins([i for i in web if not i["clean"]])
  if web:  # ground truth (the synthetic world's `clean`): the filter's confusion counts on web texts
    keep = [i["itm"] >= threshold for i in web]
    clean = [i["clean"] for i in web]
    out["web_truth"] = {
      "kept_clean": sum(k and c for k, c in zip(keep, clean)),
      "kept_noisy": sum(k and not c for k, c in zip(keep, clean)),
      "dropped_clean": sum(not k and c for k, c in zip(keep, clean)),
      "dropped_noisy": sum(not k and not c for k, c in zip(keep, clean)),
    }
  return out


def _summary(out: str, threshold: float) -> dict:
  total = {o: {"kept": 0, "dropped": 0} for o in ORIGINS}
  truth, skipped, hist = {}, 0, {}
  for f in sorted(os.listdir(os.path.join(out, "shards"))):
    if not f.endswith(".stats.json"):
      continue
    with open(os.path.join(out, "shards", f)) as fh:
      s = json.load(fh)
    for o in ORIGINS:
      for key in ("kept", "dropped"):
        total[o][key] += s[o][key]
    for key, v in s.get("web_truth", {}).items():
      truth[key] = truth.get(key, 0) + v
    skipped += s.get("skipped_images", 0)
    for key, counts in s.get("itm_histogram", {}).items():
      hist[key] = [a + b for a, b in zip(hist.get(key, [0] * len(counts)), counts)]
  summary = {"threshold": threshold, "origins": total, "skipped_images": skipped, "shards": len(shards(out))}
  summary["itm_histogram"] = dict(bins=[i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)], **hist)
  if truth:
    kept = truth["kept_clean"] + truth["kept_noisy"]
    noisy = truth["kept_noisy"] + truth["dropped_noisy"]
    summary["web_truth"] = dict(
      truth,
      kept_precision=truth["kept_clean"] / kept if kept else float("nan"),
      noisy_recall=truth["dropped_noisy"] / noisy if noisy else float("nan"),
    )
  if "web_clean" in hist:
    summary["threshold_sweep"] = _sweep(hist["web_clean"], hist["web_noisy"])
  return summary


def _sweep(clean: list[int], noisy: list[int]) -> list[dict]:
  """Precision of kept web texts and recall of dropped noisy ones at every histogram bin edge."""
  rows = []
  for k in range(1, len(clean)):
    kept_clean, kept_noisy = sum(clean[k:]), sum(noisy[k:])
    kept = kept_clean + kept_noisy
    rows.append(
      dict(
        threshold=k / len(clean),
        kept_web=kept,
        kept_precision=kept_clean / kept if kept else float("nan"),
        noisy_recall=1.0 - kept_noisy / sum(noisy) if sum(noisy) else float("nan"),
      )
    )
  return rows


def _write_json(path: str, value) -> None:
  with open(path + ".json.tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".json.tmp", path + ".json")


def main(argv) -> int:
  from absl import flags

  from blip_jax.data.sources import DataError
  from blip_jax.inference import load
  from blip_jax.interop import CheckpointError
  from blip_jax.train.distributed import maybe_initialize_distributed

  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  f = flags.FLAGS
  if f.dry_run:
    return _dry_run(f)
  missing = [name for name in ("captioner", "filter", "out") if not f[name].value]
  if missing:
    print(f"error: --{', --'.join(missing)} required (or --dry_run)", file=sys.stderr)
    return 2
  if not f["verbosity"].present:  # orbax logs every restore at INFO
    from absl import logging

    logging.set_verbosity(logging.WARNING)
  try:
    import jax

    maybe_initialize_distributed()
    captioner = load(f.captioner, "caption", f.dtype, batch_size=f.batch)
    filt = load(f.filter, None, f.dtype, batch_size=f.batch, itm_first_token="enc")
    filt._need("itm", "ITM head (the filter must be an ITC + ITM model: retrieval, itm or pretrain)")
    job = CapFilt(
      captioner,
      filt,
      method=f.method,
      num_captions=f.num_captions,
      top_p=f.top_p,
      threshold=f.threshold,
      prompt=f.prompt,
      max_length=f.max_length,
      min_length=f.min_length,
      repetition_penalty=f.repetition_penalty,
    )
    summary = run(f.config, job, f.out, f.shard_size, jax.process_index(), jax.process_count())
  except (ValueError, DataError, CheckpointError, OSError) as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  if summary is not None:
    print(json.dumps(summary, indent=2))
  return 0


def _dry_run(f) -> int:
  """--dry_run: compile the job's device functions for --topology (or the local devices) and report."""
  import jax

  from blip_jax.aot import topology_devices
  from blip_jax.capfilt_compile import compile_capfilt, configs, format_report

  try:
    devices = topology_devices(f.topology) if f.topology else jax.devices()
    report = compile_capfilt(
      *configs(f.dry_run_model, f.dry_run_image_size, f.dtype),
      devices,
      batch=f.batch,
      max_length=f.max_length,
      min_length=f.min_length,
      num_captions=f.num_captions,
    )
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", None, "the pretraining config whose data.sources to bootstrap", lock_config=True
  )
  flags.DEFINE_string("captioner", None, "the captioning fine-tune (blip_jax dir, .pth or HF dir)")
  flags.DEFINE_string("filter", None, "the ITC + ITM fine-tune used as the filter")
  flags.DEFINE_string("out", None, "output directory (shards, images, summary.json)")
  flags.DEFINE_enum("method", "nucleus", ["nucleus", "beam"], "how the captioner writes (paper: nucleus)")
  flags.DEFINE_integer("num_captions", 1, "synthetic captions per image")
  flags.DEFINE_float("top_p", 0.9, "nucleus sampling mass")
  flags.DEFINE_float("threshold", 0.5, "keep texts with ITM match probability >= this")
  flags.DEFINE_float("repetition_penalty", 1.0, "captioner repetition penalty")
  flags.DEFINE_string("prompt", "a picture of ", "the captioner's prompt (stripped from the output)")
  flags.DEFINE_integer("max_length", 30, "caption tokens, counting [DEC] and the prompt")
  flags.DEFINE_integer("min_length", 10, "minimum caption tokens, counting [DEC] and the prompt")
  flags.DEFINE_integer("shard_size", 2048, "examples per output shard (the resume granularity)")
  flags.DEFINE_integer("batch", 32, "images per device pass")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
  flags.DEFINE_bool("dry_run", False, "compile the job for --topology and report memory and speed; run nothing")
  flags.DEFINE_string("topology", None, "with --dry_run: a TPU topology such as v5p:4x4x4 (needs libtpu)")
  flags.DEFINE_enum("dry_run_model", "vit_b16", ["vit_b16", "vit_l16"], "with --dry_run: captioner / filter ViT")
  flags.DEFINE_integer("dry_run_image_size", 384, "with --dry_run: image size (the COCO fine-tunes' 384)")
  flags.mark_flags_as_required(["config"])


def cli():
  """Console entry point (`blip-jax-capfilt`)."""
  from absl import app

  from blip_jax.flag_parsing import parse_flags

  _define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()

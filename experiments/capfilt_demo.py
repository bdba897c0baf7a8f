"""The whole BLIP bootstrap in miniature, and the paper's CapFilt ablations (Tables 1-4), one command:

  python -m experiments.capfilt_demo --workdir /tmp/capfilt_demo [--tables 1,2,3,4]

on the synthetic world: 4,096 "web" scenes whose captions are 40% wrong (half another scene's caption,
half word salad of their own), 1,024 clean "human-annotated" scenes, 256 held-out scenes.
  1. pretrain model A on web + human (the demo's size and schedule);
  2. fine-tune A on the human set twice: a captioner (LM) and a filter (ITC + ITM);
  3. CapFilt the web set (nucleus captions; the ITM threshold is the one that keeps 90% of held-out
     clean pairs, see calibrate_threshold), human pairs untouched;
  4. pretrain model B from scratch on human + the bootstrapped set, same steps and seed;
  5. evaluate every model the same way: zero-shot retrieval on the held-out scenes, and captioning
     CIDEr after the same short caption fine-tune on the human set.
Table 1 also pretrains on captioner-only and filter-only sets (re-selected from the same CapFilt
scores, `capfilt.select`); Table 2 captions with beam search instead; Table 3 pretrains A with the
other encoder / decoder sharing settings; Table 4 uses one fine-tune (ITC + ITM + LM) as both
captioner and filter. Every stage writes under --workdir and is skipped when its result exists, so a
rerun continues; results.json, results.md and itm_histogram.png are written at the end.

The filter is the paper's ITC + ITM fine-tune with two opt-in training changes this world needs
(`objective.distinct_text_negatives`, `objective.shuffled_text_negatives`, see tasks/pretrain.py):
half its noisy captions are word salad of the right words, which an ITM trained only on well-formed
negatives scores as a match. The paper-exact filter is scored too (`filter_paper` in the results).
"""

from __future__ import annotations

import argparse
import json
import os

from experiments import capfilt_histogram, caption_coco_base, demo, retrieval_coco_base

NUM_WEB, NUM_HUMAN, NUM_HELD_OUT, SIZE = 4096, 1024, 256, demo.SIZE
# mixture weights = sizes: every pair is seen about equally often, as the official concatenated sets
WEB = dict(type="synthetic", num=NUM_WEB, image_size=SIZE, noise=0.4, weight=NUM_WEB)
HUMAN = dict(type="synthetic", num=NUM_HUMAN, offset=NUM_WEB, image_size=SIZE, human=True, weight=NUM_HUMAN)
HELD_OUT = dict(type="synthetic", num=NUM_HELD_OUT, offset=NUM_WEB + NUM_HUMAN, image_size=SIZE, captions=5)
# The filter's fine-tune on the human set (the captioner keeps its :cpu schedule): the ITM head of the
# demo's 2-layer model needs far more steps than the retrieval :cpu schedule's 4 epochs.
FILTER_EPOCHS, FILTER_LR = 20, 3e-4
# The filter's threshold keeps this share of held-out clean pairs (see calibrate_threshold)
KEEP_CLEAN = 0.9
# Table 1 rows: (web texts, synthetic captions) as capfilt.select takes them
SELECTIONS = {"C+F": ("filtered", "filtered"), "C only": ("all", "all"), "F only": ("filtered", "none")}


def pretrain_config(sources, steps: int, share: str = "all_but_sa"):
  c = demo.get_config()
  c.data.sources = tuple(sources)
  c.total_steps = steps
  c.model.share = share
  c.eval.sources = (dict(HELD_OUT, captions=1),)
  return c


def finetune_config(module, init_from: str, share: str = "all_but_sa"):
  c = module.get_config("cpu")
  c.init_from = init_from
  c.model.share = share
  c.data.sources = (dict(HUMAN, captions=1, weight=1),)
  c.num_examples = NUM_HUMAN
  c.eval.sources = (HELD_OUT,)
  return c


def filter_config(init_from: str, paper: bool = False):
  c = finetune_config(retrieval_coco_base, init_from)
  c.epochs, c.optimizer.peak_lr = FILTER_EPOCHS, FILTER_LR
  c.objective.distinct_text_negatives = c.objective.shuffled_text_negatives = not paper
  return c


def shared_config(init_from: str):
  """Table 4: ONE model fine-tuned on the human set with all three losses, used as captioner and filter."""
  c = pretrain_config([dict(HUMAN, captions=1, weight=1)], 0)
  c.init_from = init_from
  c.num_examples, c.epochs = NUM_HUMAN, FILTER_EPOCHS
  c.optimizer.peak_lr, c.optimizer.warmup_steps = FILTER_LR, 16
  c.objective.distinct_text_negatives = c.objective.shuffled_text_negatives = True
  return c


def _train(cfg, workdir: str) -> dict:
  from blip_jax.train.trainer import train

  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  result = train(cfg, workdir)
  if not result["finished"]:  # preempted (SIGTERM / Ctrl-C): saved; a rerun continues from here
    raise KeyboardInterrupt(f"{workdir}: stopped at step {result['step']}; rerun the same command to continue")
  with open(done, "w") as f:
    json.dump(result, f)
  return result


def calibrate_threshold(filt) -> float:
  """The ITM probability that KEEP_CLEAN of the held-out scenes' true captions reach: the threshold set on
  clean validation pairs, never on the web set's ground truth. (The paper's 0.5 suits its ViT-B filter;
  this 2-layer filter, trained on one positive per three negatives, scores true pairs lower.)"""
  import numpy as np

  from blip_jax.data.sources import make_source
  from blip_jax.data.transforms import eval_transform

  source = make_source({k: v for k, v in HELD_OUT.items() if k != "captions"}, "pretrain")
  records = [source[i] for i in range(len(source))]
  pixels = np.stack([eval_transform(r["pil"][0], filt.image_size) for r in records])
  probs = np.concatenate(filt.itm_pairs(pixels, [[r["caption"]] for r in records]))
  return float(np.quantile(probs, 1.0 - KEEP_CLEAN))


def _capfilt(out: str, captioner: str, filt: str, steps: int, method: str = "nucleus", prompt: str = "a picture of "):
  """CapFilt the web set into `out` (once), the filter's threshold calibrated; returns its summary."""
  from blip_jax import capfilt
  from blip_jax.inference import load

  if not os.path.exists(os.path.join(out, "summary.json")):
    filt = load(filt, "retrieval", itm_first_token="enc")
    job = capfilt.CapFilt(
      load(captioner, "caption"),
      filt,
      threshold=calibrate_threshold(filt),
      method=method,
      prompt=prompt,
      max_length=30,
      min_length=16 if prompt else 4,
    )
    capfilt.run(pretrain_config([WEB], steps), job, out, shard_size=1024)
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


class Bootstrap:
  """The stages of one --workdir; each method trains or reads one model and returns its figures."""

  def __init__(self, workdir: str, steps: int):
    self.workdir, self.steps = workdir, steps

  def path(self, *names: str) -> str:
    return os.path.join(self.workdir, *names)

  def evaluate(self, name: str, sources, share: str = "all_but_sa") -> dict:
    """Pretrain `name` from scratch on `sources`, caption-fine-tune it; zero-shot R@1 and CIDEr."""
    pre = _train(pretrain_config(sources, self.steps, share), self.path(name, "pretrain"))
    cap = _train(
      finetune_config(caption_coco_base, self.path(name, "pretrain", "model"), share), self.path(name, "caption")
    )
    return {
      "zero_shot_i2t_r1": 100 * pre["eval"]["i2t_r1"],
      "zero_shot_t2i_r1": 100 * pre["eval"]["t2i_r1"],
      "caption_CIDEr": cap["eval"]["CIDEr"],
    }

  def model_a(self) -> dict:
    return self.evaluate("A", [WEB, HUMAN])

  def captioner_and_filter(self) -> tuple[str, str]:
    """The captioner is A's caption fine-tune (model_a made it); the filter its ITC + ITM fine-tune."""
    _train(filter_config(self.path("A", "pretrain", "model")), self.path("A", "filter"))
    return self.path("A", "caption", "best"), self.path("A", "filter", "best")

  def bootstrapped(self, name: str, capfilt_dir: str, web: str, synthetic: str) -> dict:
    """Pretrain on human + the texts of a CapFilt output that (web, synthetic) selects."""
    from blip_jax import capfilt

    ann = self.path(name + ".json")
    if not os.path.exists(ann):
      records = capfilt.select(capfilt_dir, web, synthetic)
      with open(ann + ".tmp", "w") as f:
        json.dump(records, f)
      os.replace(ann + ".tmp", ann)
    with open(ann) as f:
      n = len(json.load(f))
    figures = self.evaluate(name, [HUMAN, dict(type="json", ann=ann, image_root="", weight=n)])
    return dict(figures, texts=n)


def _filter_report(summary: dict) -> dict:
  t = summary["web_truth"]
  return {
    "threshold": summary["threshold"],
    "web_kept": summary["origins"]["web"]["kept"],
    "synthetic_kept": summary["origins"]["synthetic"]["kept"],
    "kept_precision": 100 * t["kept_precision"],
    "noisy_recall": 100 * t["noisy_recall"],
  }


def run(workdir: str, steps: int = 768, tables=(1, 2, 3, 4)) -> dict:
  from blip_jax.models.blip import param_shapes
  from blip_jax.models.param_count import count
  from blip_jax.train.build import model_config

  b = Bootstrap(workdir, steps)
  results = {"A (noisy web + human)": b.model_a()}
  captioner, filt = b.captioner_and_filter()
  nucleus = b.path("capfilt_nucleus")
  summary = _capfilt(nucleus, captioner, filt, steps)
  out = {"filter": _filter_report(summary), "table1": dict(results)}
  capfilt_histogram.plot(summary["itm_histogram"], b.path("itm_histogram.png"), summary["threshold"])
  _train(filter_config(b.path("A", "pretrain", "model"), paper=True), b.path("A", "filter_paper"))
  paper = _capfilt(b.path("capfilt_paper_filter"), captioner, b.path("A", "filter_paper", "best"), steps)
  out["filter_paper"] = _filter_report(paper)
  for name, (web, synthetic) in SELECTIONS.items():
    if name == "C+F" or 1 in tables:
      out["table1"][name] = b.bootstrapped("B_" + name.replace(" ", "_").replace("+", ""), nucleus, web, synthetic)
  _write(workdir, out)  # after each table: a long run shows what it has so far
  if 2 in tables:
    beam = _capfilt(b.path("capfilt_beam"), captioner, filt, steps, method="beam")
    out["table2"] = {
      "nucleus": dict(out["table1"]["C+F"], **_filter_report(summary)),
      "beam": dict(b.bootstrapped("B_beam", b.path("capfilt_beam"), "filtered", "filtered"), **_filter_report(beam)),
    }
  _write(workdir, out)
  if 4 in tables:
    _train(shared_config(b.path("A", "pretrain", "model")), b.path("A", "shared"))
    shared = b.path("A", "shared", "model")
    s = _capfilt(b.path("capfilt_shared"), shared, shared, steps, prompt="")  # its LM was trained without one
    out["table4"] = {
      "separate": dict(out["table1"]["C+F"], **_filter_report(summary)),
      "shared": dict(b.bootstrapped("B_shared", b.path("capfilt_shared"), "filtered", "filtered"), **_filter_report(s)),
    }
  _write(workdir, out)
  if 3 in tables:
    out["table3"] = {}
    for share in ("all_but_sa", "all", "all_but_ca", "none"):
      figures = (
        results["A (noisy web + human)"] if share == "all_but_sa" else b.evaluate(f"A_{share}", [WEB, HUMAN], share)
      )
      cfg = pretrain_config([WEB, HUMAN], steps, share)
      out["table3"][share] = dict(figures, params=count(param_shapes(model_config(cfg))))
      _write(workdir, out)
  return out


def _write(workdir: str, out: dict) -> None:
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(out, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown(out))


def markdown(out: dict) -> str:
  """The result tables as markdown (what the README shows)."""
  cols = ("zero_shot_i2t_r1", "zero_shot_t2i_r1", "caption_CIDEr")
  head = "| | zero-shot i2t R@1 | zero-shot t2i R@1 | CIDEr (after caption fine-tune)"
  lines = []

  def table(title, rows, extra=()):
    lines.extend(
      ["", f"**{title}**", "", head + "".join(f" | {e}" for e in extra) + " |", "|---" * (4 + len(extra)) + "|"]
    )
    for name, r in rows.items():
      cells = [f"{r[c]:.1f}" if c != "caption_CIDEr" else f"{r[c]:.2f}" for c in cols]
      cells += [f"{r[e]:,}" if isinstance(r[e], int) else f"{r[e]:.1f}" for e in extra]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")

  f, p = out["filter"], out["filter_paper"]
  lines += [
    "| filter | threshold | web texts kept | kept web texts clean | noisy web texts dropped |",
    "|---|---|---|---|---|",
    f"| ITM + distinct and word-order negatives (used) | {f['threshold']:.3f} | {f['web_kept']} | "
    f"{f['kept_precision']:.1f}% | {f['noisy_recall']:.1f}% |",
    f"| ITM as in the paper | {p['threshold']:.3f} | {p['web_kept']} | {p['kept_precision']:.1f}% | "
    f"{p['noisy_recall']:.1f}% |",
  ]
  table("Table 1: CapFilt components", out["table1"])
  if "table2" in out:
    table("Table 2: captioner decoding", out["table2"], ("synthetic_kept",))
  if "table3" in out:
    table("Table 3: text encoder / decoder sharing (pretrained on noisy web + human)", out["table3"], ("params",))
  if "table4" in out:
    table("Table 4: captioner and filter", out["table4"], ("kept_precision", "noisy_recall"))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.capfilt_demo", description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=768, help="pretraining steps of every pretrained model")
  p.add_argument(
    "--tables", default="1,2,3,4", help="which of the paper's tables to reproduce (1 = C+F only if left out)"
  )
  a = p.parse_args(argv)
  tables = tuple(int(t) for t in a.tables.split(",") if t)
  result = run(a.workdir, a.steps, tables)
  print(markdown(result))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

"""The ITM-probability histogram of clean vs noisy web captions (a CapFilt summary's `itm_histogram`) as
a PNG, drawn with PIL (no plotting library in the requirements).

  python -m experiments.capfilt_histogram DIR/summary.json OUT.png
"""

from __future__ import annotations

import json
import sys

from PIL import Image, ImageDraw, ImageFont

SERIES = (("web_clean", "clean web captions", (40, 150, 60)), ("web_noisy", "noisy web captions", (210, 50, 50)))
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 70, 20, 50, 60


def plot(
  histogram: dict,
  path: str,
  threshold: float = 0.5,
  title: str = "CapFilt filter: ITM match probability (bars: share of each set's texts per bin)",
) -> None:
  """Draw the fraction of each series' texts per probability bin, side by side, with the threshold.

  histogram: {"bins": edges (n + 1,), "web_clean": counts (n,), "web_noisy": counts (n,)}."""
  missing = [k for k, _, _ in SERIES if k not in histogram]
  if missing:
    raise ValueError(f"histogram has no {missing}: the CapFilt source had no `clean` flags")
  edges = histogram["bins"]
  n = len(edges) - 1
  fractions = {k: [c / max(sum(histogram[k]), 1) for c in histogram[k]] for k, _, _ in SERIES}
  top = max(max(f) for f in fractions.values()) or 1.0
  img = Image.new("RGB", (W, H), "white")
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default(size=14)
  x0, y0, x1, y1 = LEFT, TOP, W - RIGHT, H - BOTTOM
  d.rectangle([x0, y0, x1, y1], outline="black")
  bin_w = (x1 - x0) / n
  for j, (key, _, colour) in enumerate(SERIES):
    for b, frac in enumerate(fractions[key]):
      left = x0 + b * bin_w + 2 + j * (bin_w - 4) / 2
      d.rectangle([left, y1 - (y1 - y0) * frac / top, left + (bin_w - 4) / 2 - 1, y1], fill=colour)
  for t in range(0, 11, 2):  # x ticks at 0, 0.2, ..., 1
    x = x0 + (x1 - x0) * t / 10
    d.line([x, y1, x, y1 + 5], fill="black")
    d.text((x - 10, y1 + 8), f"{t / 10:.1f}", fill="black", font=font)
  for t in range(5):  # y ticks
    y = y1 - (y1 - y0) * t / 4
    d.line([x0 - 5, y, x0, y], fill="black")
    d.text((5, y - 8), f"{top * t / 4:.0%}", fill="black", font=font)
  xt = x0 + (x1 - x0) * threshold
  for y in range(int(y0), int(y1), 8):  # dashed threshold line
    d.line([xt, y, xt, min(y + 4, y1)], fill="black", width=2)
  d.text((xt + 4, y0 + 4), f"threshold {threshold:.3f}", fill="black", font=font)
  d.text((x0, 15), title, fill="black", font=font)
  d.text(((x0 + x1) / 2 - 90, H - 25), "ITM match probability (filter)", fill="black", font=font)
  for j, (key, label, colour) in enumerate(SERIES):
    y = y0 + 24 + 20 * j
    d.rectangle([x1 - 190, y, x1 - 178, y + 12], fill=colour)
    d.text((x1 - 172, y - 2), f"{label} ({sum(histogram[key])})", fill="black", font=font)
  img.save(path)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2:
    print("usage: python -m experiments.capfilt_histogram DIR/summary.json OUT.png", file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    summary = json.load(f)
  plot(summary["itm_histogram"], argv[1], summary.get("threshold", 0.5))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

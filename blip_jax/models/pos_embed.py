"""ViT position-embedding resize with PyTorch's bicubic kernel (reference section 2).

BLIP moves between image sizes (224 -> 384 -> 480) by resizing the patch grid of `pos_embed` with
`F.interpolate(mode="bicubic", align_corners=False)`. That kernel uses A = -0.75 and clamps source
indices at the border; `jax.image.resize("cubic")` uses A = -0.5 and differs, so we reproduce PyTorch's
CPU kernel: its float32 tap weights and its summation order.
"""

from __future__ import annotations

import math

import numpy as np

_A = np.float32(-0.75)  # PyTorch's cubic convolution coefficient


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Source indices (out, 4) and float32 weights (out, 4), computed as PyTorch's CPU kernel does."""
  f = np.float32
  scale = f(in_size) / f(out_size)
  src = (np.arange(out_size, dtype=f) + f(0.5)) * scale - f(0.5)  # align_corners=False, not clamped
  base = np.floor(src)
  t = (src - base).astype(f)
  near = lambda x: ((_A + f(2)) * x - (_A + f(3))) * x * x + f(1)  # |x| <= 1
  far = lambda x: ((_A * x - f(5) * _A) * x + f(8) * _A) * x - f(4) * _A  # 1 < |x| < 2
  t2 = f(1) - t
  w = np.stack([far(t + f(1)), near(t), near(t2), far(t2 + f(1))], axis=-1).astype(f)
  idx = np.clip(base.astype(np.int64)[:, None] - 1 + np.arange(4)[None, :], 0, in_size - 1)
  return idx, w


def bicubic_resize_hwc(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Resize (H, W, C) float32 like F.interpolate(bicubic, align_corners=False) on CPU.

  Same float32 weights and the same summation order as PyTorch (4 width taps summed in order for
  each of the 4 height taps, then those summed in order), so results agree to float32 rounding.
  """
  x = np.asarray(x, np.float32)
  iy, wy = _taps(x.shape[0], out_h)
  ix, wx = _taps(x.shape[1], out_w)
  out = None
  for a in range(4):
    rows = x[iy[:, a]]  # (out_h, W, C)
    inner = None
    for b in range(4):
      term = rows[:, ix[:, b]] * wx[None, :, b, None]
      inner = term if inner is None else inner + term
    term = inner * wy[:, a, None, None]
    out = term if out is None else out + term
  return out


def resize_pos_embed(pos_embed: np.ndarray, num_tokens: int, num_extra_tokens: int = 1) -> np.ndarray:
  """Resize a (1, extra + g*g, D) position embedding to (1, num_tokens, D).

  The first `num_extra_tokens` rows (CLS) are kept; the g x g grid is resized bicubically in float32.
  """
  pos_embed = np.asarray(pos_embed)
  if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
    raise ValueError(f"pos_embed must be (1, tokens, D), got {pos_embed.shape}")
  extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[0, num_extra_tokens:]
  g_in, g_out = math.isqrt(grid.shape[0]), math.isqrt(num_tokens - num_extra_tokens)
  if g_in * g_in != grid.shape[0] or g_out * g_out != num_tokens - num_extra_tokens:
    raise ValueError(
      f"cannot resize pos_embed of {pos_embed.shape[1]} tokens to {num_tokens}: patch grids must be square"
    )
  if g_in == g_out:
    return pos_embed
  d = grid.shape[-1]
  x = bicubic_resize_hwc(grid.reshape(g_in, g_in, d), g_out, g_out)
  out = np.concatenate([extra.astype(np.float32), x.reshape(1, g_out * g_out, d)], axis=1)
  return out.astype(pos_embed.dtype)

"""pos_embed resize equals torch F.interpolate(bicubic, align_corners=False)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blip_jax.models.pos_embed import resize_pos_embed


def _torch_resize(pe, n):
  g, go = int(round((pe.shape[1] - 1) ** 0.5)), int(round((n - 1) ** 0.5))
  grid = torch.from_numpy(pe[:, 1:].copy()).reshape(1, g, g, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(go, go), mode="bicubic", align_corners=False)
  return np.concatenate([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, go * go, -1).numpy()], axis=1)


@pytest.mark.parametrize("scale", [0.02, 1.0])
def test_chain_197_577_901_matches_torch(scale):
  """Real pos_embeds are ~N(0, 0.02): agreement within 1e-6 absolute. At unit scale the two float32
  computations differ by float32 rounding, checked as 1e-6 relative to the values' magnitude."""
  pe = (np.random.default_rng(0).normal(size=(1, 197, 768)) * scale).astype(np.float32)
  for n in (577, 901):
    want = _torch_resize(pe, n)
    got = resize_pos_embed(pe, n)
    assert got.shape == want.shape == (1, n, 768) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_array_equal(got[:, 0], pe[:, 0])  # CLS row kept
    pe = got
  down = resize_pos_embed(pe, 197)  # and back down
  assert np.abs(down - _torch_resize(pe, 197)).max() <= 1e-6 * max(1.0, float(np.abs(pe).max()))


def test_not_jax_cubic():
  """jax.image.resize uses a = -0.5: a different kernel, which we must not be."""
  import jax

  pe = np.random.default_rng(1).normal(size=(1, 197, 8)).astype(np.float32)
  ours = resize_pos_embed(pe, 577)[0, 1:].reshape(24, 24, 8)
  theirs = np.asarray(jax.image.resize(pe[0, 1:].reshape(14, 14, 8), (24, 24, 8), "cubic"))
  assert np.abs(ours - theirs).max() > 1e-3


def test_non_square_grid_rejected():
  with pytest.raises(ValueError, match="square"):
    resize_pos_embed(np.zeros((1, 11, 4), np.float32), 17)

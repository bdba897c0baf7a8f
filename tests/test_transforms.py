"""Transforms agree with a straightforward numpy/PIL implementation for fixed draws, and draws are a
pure function of (seed, index, epoch)."""

import math

import numpy as np
import pytest
from PIL import Image

from blip_jax.data import transforms as T


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  return Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))


def _np_normalize(arr):
  out = np.empty(arr.shape, np.float32)
  for ch, (m, s) in enumerate(zip((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))):
    out[..., ch] = (arr[..., ch].astype(np.float32) / 255.0 - np.float32(m)) / np.float32(s)
  return out


def test_crop_flip_normalize_match_numpy(image):
  draw = T.TrainDraw(crop=(5, 11, 40, 52), flip=True, augments=())
  got = T.apply_train(image, draw, 32)
  arr = np.asarray(image)[5:45, 11:63]  # crop by slicing
  resized = np.asarray(Image.fromarray(arr).resize((32, 32), Image.BICUBIC))
  want = _np_normalize(resized[:, ::-1])
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.shape == (32, 32, 3) and got.dtype == np.float32


def test_eval_transform(image):
  got = T.eval_transform(image, 24)
  want = _np_normalize(np.asarray(image.resize((24, 24), Image.BICUBIC)))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_integer_translate_matches_numpy_shift(image):
  arr = np.asarray(image)
  got = np.asarray(T.apply_augment(image, "TranslateX", 5.0))
  want = np.full_like(arr, 128)
  want[:, :-5] = arr[:, 5:]  # output x samples input x + 5
  np.testing.assert_array_equal(got, want)
  got = np.asarray(T.apply_augment(image, "TranslateY", -5.0))
  want = np.full_like(arr, 128)
  want[5:] = arr[:-5]
  np.testing.assert_array_equal(got, want)


def test_magnitudes_at_m5():
  assert T._magnitude("Brightness", 5) == pytest.approx(1.0)  # no-op factor, as in the official code
  assert T._magnitude("ShearX", 5) == pytest.approx(0.15)
  assert T._magnitude("TranslateY", 5) == pytest.approx(5.0)
  assert T._magnitude("Rotate", 5) == pytest.approx(15.0)
  img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))
  np.testing.assert_array_equal(np.asarray(T.apply_augment(img, "Brightness", 1.0)), np.asarray(img))


def test_crop_draws_respect_scale_ratio_and_bounds():
  rng = np.random.default_rng(0)
  for _ in range(2000):
    top, left, h, w = T.sample_resized_crop(rng, 60, 90, (0.2, 1.0))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90 and h > 0 and w > 0
    area = h * w / (60 * 90)
    assert 0.2 * 0.85 <= area <= 1.0  # rounding of h, w
    assert 3 / 4 * 0.85 <= w / h <= 4 / 3 / 0.85 or (h, w) == (60, 80)  # or the central fallback


def test_draws_are_a_function_of_seed_index_epoch(image):
  a = T.train_transform(image, 32, seed=3, index=7, epoch=2)
  b = T.train_transform(image, 32, seed=3, index=7, epoch=2)
  np.testing.assert_array_equal(a, b)
  others = [
    T.train_transform(image, 32, seed=3, index=7, epoch=3),
    T.train_transform(image, 32, seed=3, index=8, epoch=2),
    T.train_transform(image, 32, seed=4, index=7, epoch=2),
  ]
  assert all(not np.array_equal(a, o) for o in others)


def test_randaugment_draw_statistics():
  rng = np.random.default_rng(0)
  draws = [T.sample_train(rng, 60, 90) for _ in range(4000)]
  ops = [op for d in draws for op in d.augments]
  assert all(len(d.augments) == 2 for d in draws)
  applied = np.mean([a for _, a, _ in ops])
  assert abs(applied - 0.5) < 0.02  # each op applied with p = 0.5
  names = [n for n, _, _ in ops]
  assert set(names) == set(T.AUGMENTS)
  assert max(names.count(n) for n in T.AUGMENTS) / len(names) < 0.12  # ~uniform over 10 ops
  assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
  assert math.isclose(abs([v for n, _, v in ops if n == "Rotate"][0]), 15.0)

"""A trained BLIP in one call: `blip_jax.load(path)` -> `BlipModel`, with its tokenizer and
preprocessing attached, for the things people use BLIP for after training.

  model = blip_jax.load("runs/cap/best")                 # blip_jax, Salesforce .pth or HF directory
  model.caption(["a.jpg", pil_image, array])              # [[("a dog on a sofa", -0.41)], ...]
  model.itm(images, texts)                                # (I, T) match probabilities
  model.similarity(images, texts)                         # (I, T) ITC cosines
  model.image_features(images), model.text_features(texts)  # projected, L2-normalised (N, 256)
  model.answer(images, questions)                         # VQA checkpoints

Images are file paths, PIL images or HxWx3 arrays (uint8, or floats in [0, 1]); they get the eval
transform (bicubic resize to the model's size, normalisation). Work runs in fixed-size batches (one
compiled shape per method), data-parallel over the local devices. Errors name the offending input.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from blip_jax import cpu_bf16, interop
from blip_jax.data.sources import load_image
from blip_jax.data.text import pre_caption, pre_question
from blip_jax.data.transforms import eval_transform
from blip_jax.models.blip import Blip

DTYPES = ("float32", "bfloat16")


def load(
  path: str,
  task: str | None = None,
  dtype: str = "float32",
  *,
  tokenizer: str | None = None,
  batch_size: int = 32,
  itm_first_token: str | None = None,
) -> "BlipModel":
  """Any BLIP checkpoint (interop.load) as a BlipModel. task: the model wanted (None: the checkpoint's
  own; a pretraining checkpoint narrows to any task). dtype: compute and weights ("bfloat16" halves
  memory; ITM/ITC/caption scores then differ from float32 at about 1e-2). itm_first_token: "cls" or
  "enc" (default by task: [CLS] for "itm", the official demo model and HF's BlipForImageTextRetrieval;
  [ENC] otherwise, as BLIP's training and retrieval evaluation). Raises CheckpointError / ValueError."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: must be one of {DTYPES}")
  cpu_bf16.enable(dtype)  # native bf16 dots on CPU, when nothing has started JAX's backend yet
  ckpt = interop.load(path, task=task, tokenizer=tokenizer, need_tokenizer=True)
  return BlipModel(ckpt, dtype, batch_size, itm_first_token)


class BlipModel:
  """A loaded model; see the module docstring. Attributes: config, params, tokenizer, image_size."""

  def __init__(self, ckpt: interop.Checkpoint, dtype: str = "float32", batch_size: int = 32, itm_first_token=None):
    self.config = ckpt.config.replace(dtype=dtype)
    cast = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    self.tokenizer, self.image_size = ckpt.tokenizer, self.config.vision.image_size
    devices = jax.local_devices()
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.batch = -(-batch_size // len(devices)) * len(devices)
    self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, cast), ckpt.params), replicated)
    token = itm_first_token or ("cls" if self.config.task == "itm" else "enc")
    if token not in ("cls", "enc"):
      raise ValueError(f"itm_first_token={itm_first_token!r}: must be 'cls' or 'enc'")
    t = self.config.text
    self.itm_token = t.cls_token_id if token == "cls" else t.enc_token_id
    self.model = Blip(self.config)
    self.text_length = 35

  # ---- inputs -------------------------------------------------------------------------------------
  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    """Paths / PIL images / HxWx3 arrays -> (N, S, S, 3) normalised float32. Raises BadExample (a
    file that does not open) or ValueError naming the input."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) and not (
      isinstance(images, np.ndarray) and images.ndim == 4
    ):
      images = [images]
    out = []
    for i, img in enumerate(images):
      if isinstance(img, (str, os.PathLike)):
        img = load_image(str(img))
      elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[-1] != 3:
          raise ValueError(f"image {i}: an array must be H x W x 3, got shape {img.shape}")
        if img.dtype != np.uint8:
          if img.min() < 0 or img.max() > 1:
            raise ValueError(f"image {i}: a float array must hold RGB values in [0, 1]")
          img = (img * 255.0).round().astype(np.uint8)
        img = Image.fromarray(img)
      elif not isinstance(img, Image.Image):
        raise ValueError(f"image {i}: expected a path, a PIL image or an array, got {type(img).__name__}")
      out.append(eval_transform(img, self.image_size))
    if not out:
      raise ValueError("no images given")
    return np.stack(out)

  def tokenize(self, texts: Sequence[str], question: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Texts cleaned as BLIP's data pipeline (pre_caption / pre_question) -> (T, L) ids and mask."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    clean = []
    for i, t in enumerate(texts):
      if not isinstance(t, str) or not (pre_question(t) if question else pre_caption(t)).strip():
        raise ValueError(f"text {i} ({t!r}) is empty: nothing to score")
      clean.append(pre_question(t) if question else pre_caption(t, 30))
    if not clean:
      raise ValueError("no texts given")
    return self.tokenizer.encode(clean, self.text_length)

  def _need(self, component: str, what: str) -> None:
    if component not in self.config.components:
      raise ValueError(
        f"this checkpoint's model (task {self.config.task!r}) has no {what}; load a checkpoint that has it "
        "(a pretraining checkpoint has all but VQA's)"
      )

  def _batched(self, fn, *arrays):
    """fn over fixed-size, device-sharded chunks of arrays (N, ...); outputs concatenated (N, ...)."""
    n, outs = len(arrays[0]), []
    for start in range(0, n, self.batch):
      chunk = [a[start : start + self.batch] for a in arrays]
      m = len(chunk[0])
      chunk = [jax.device_put(np.concatenate([c, np.repeat(c[-1:], self.batch - m, 0)]), self._rows) for c in chunk]
      outs.append(jax.tree.map(lambda x: np.asarray(x)[:m], jax.device_get(fn(self.params, *chunk))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  # ---- features and scores --------------------------------------------------------------------------
  @functools.cached_property
  def _image_fn(self):
    return jax.jit(lambda p, x: self._apply(p, Blip.image_feature, self._apply(p, Blip.encode_image, x)))

  @functools.cached_property
  def _text_fn(self):
    return jax.jit(lambda p, i, m: self._apply(p, Blip.text_feature, self._apply(p, Blip.encode_text, i, m)))

  def _apply(self, params, method, *args, **kw):
    return self.model.apply({"params": params}, *args, method=method, **kw)

  def image_features(self, images) -> np.ndarray:
    """(N, E) projected, L2-normalised ITC image features."""
    return self.pixel_features(self.preprocess(images))

  def pixel_features(self, pixels: np.ndarray) -> np.ndarray:
    """image_features of already preprocessed images (N, S, S, 3)."""
    self._need("proj", "ITC projections (image/text features)")
    return self._batched(self._image_fn, pixels).astype(np.float32)

  def text_features(self, texts) -> np.ndarray:
    """(T, E) projected, L2-normalised ITC text features."""
    self._need("proj", "ITC projections (image/text features)")
    return self._batched(self._text_fn, *self.tokenize(texts)).astype(np.float32)

  def similarity(self, images, texts) -> np.ndarray:
    """(I, T) cosine of the ITC features (what retrieval ranks by before ITM)."""
    return self.image_features(images) @ self.text_features(texts).T

  def itm(self, images, texts) -> np.ndarray:
    """(I, T) ITM match probabilities (softmax of the ITM head) of every image with every text."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    pixels = self.preprocess(images)
    return np.stack(self.itm_pairs(pixels, [texts] * len(pixels)))

  @functools.cached_property
  def _itm_pairs_fn(self):
    def fn(params, images, ids, mask, index):  # images (B, ...), texts (B * T, L) of image index[j]
      img = self._apply(params, Blip.encode_image, images)
      logits = self._apply(params, Blip.itm_logits, ids, mask, img, image_index=index, first_token=self.itm_token)
      return jax.nn.softmax(logits.astype(jnp.float32), -1)[:, 1]

    return jax.jit(fn)

  def itm_pairs(self, pixels: np.ndarray, texts: list[list[str]]) -> list[np.ndarray]:
    """ITM match probability of each preprocessed image (N, S, S, 3) with each of *its own* texts
    (the same number per image): a list of N arrays. One image pass per image, its cross-attention
    K/V shared by its texts (what CapFilt's filter needs)."""
    self._need("itm", "ITM head")
    per = {len(t) for t in texts}
    if len(per) != 1 or len(texts) != len(pixels):
      raise ValueError("itm_pairs needs one list of texts per image, all of the same length")
    t = per.pop()
    ids, mask = self.tokenize([x for row in texts for x in row])
    ids, mask = ids.reshape(len(pixels), t, -1), mask.reshape(len(pixels), t, -1)

    def fn(params, images, ids, mask):
      b = images.shape[0]
      index = jnp.repeat(jnp.arange(b), t)
      return self._itm_pairs_fn(params, images, ids.reshape(b * t, -1), mask.reshape(b * t, -1), index).reshape(b, t)

    return list(self._batched(fn, pixels, ids, mask))

  # ---- generation -----------------------------------------------------------------------------------
  def caption(self, images, **kw) -> list[list[tuple[str, float]]]:
    """Per image, `num_captions` (caption, score) pairs: beam search's n best with transformers'
    sequences_scores (num_captions <= num_beams), or nucleus samples with their log-probability.
    Options: see caption_pixels."""
    return self.caption_pixels(self.preprocess(images), **kw)

  def caption_pixels(
    self,
    pixels: np.ndarray,
    *,
    num_beams: int = 3,
    max_length: int = 20,
    min_length: int = 5,
    prompt: str = "a picture of ",
    num_captions: int = 1,
    sample: bool = False,
    top_p: float = 0.9,
    top_k: int = 50,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
  ) -> list[list[tuple[str, float]]]:
    """`caption` of preprocessed images (N, S, S, 3). max_length / min_length count [DEC] and the
    prompt, as the official code; repetition_penalty, top_p / top_k / temperature as transformers."""
    from blip_jax.generate.search import generate

    self._need("lm_head", "image-grounded decoder (captioning)")
    prompt_ids = np.asarray(self.tokenizer.tokenize_ids(prompt) if prompt else [], np.int32)
    if 1 + len(prompt_ids) >= max_length:
      raise ValueError(f"max_length={max_length} leaves no room after [DEC] and the prompt's {len(prompt_ids)} tokens")
    if sample:
      method, opts = "sample", dict(num_samples=num_captions, top_p=top_p, top_k=top_k, temperature=temperature)
    elif num_beams > 1:
      if num_captions > num_beams:
        raise ValueError(f"num_captions={num_captions} > num_beams={num_beams}: beam search keeps num_beams")
      method, opts = "beam", dict(num_beams=num_beams, num_return=num_captions)
    else:
      if num_captions != 1:
        raise ValueError("greedy decoding gives one caption per image: use num_beams > 1 or sample=True")
      method, opts = "greedy", {}
    opts.update(max_length=max_length, min_length=min_length, repetition_penalty=repetition_penalty, with_scores=True)
    options, rng = tuple(sorted(opts.items())), jax.random.key(seed)

    def fn(params, pixels):
      img = self._apply(params, Blip.encode_image, pixels)
      return generate(params, self.config.text, img, jnp.asarray(prompt_ids), rng, method=method, options=options)

    ids, lengths, scores = self._batched_grouped(jax.jit(fn), pixels, num_captions)
    start = 1 + len(prompt_ids)
    texts = [self.tokenizer.decode(ids[r, start : lengths[r]]).strip() for r in range(len(ids))]
    return [
      [(texts[i * num_captions + j], float(scores[i * num_captions + j])) for j in range(num_captions)]
      for i in range(len(texts) // num_captions)
    ]

  def _batched_grouped(self, fn, pixels, group: int):
    """Like _batched for outputs with `group` rows per input row."""
    outs = []
    for start in range(0, len(pixels), self.batch):
      chunk = pixels[start : start + self.batch]
      m = len(chunk)
      padded = jax.device_put(np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - m, 0)]), self._rows)
      outs.append([np.asarray(x)[: m * group] for x in jax.device_get(fn(self.params, padded))])
    return [np.concatenate(xs) for xs in zip(*outs)]

  def answer(self, images, questions, *, num_beams: int = 3, max_length: int = 10, min_length: int = 1) -> list[str]:
    """VQA answers by beam search over the answer decoder (the official `generate` inference); one
    question per image (pass the same image twice to ask it two questions)."""
    from blip_jax.generate.search import generate
    from blip_jax.tasks.vqa import question_states

    self._need("answer_decoder", "VQA answer decoder")
    pixels, (ids, mask) = self.preprocess(images), self.tokenize(questions, question=True)
    if len(pixels) != len(ids):
      raise ValueError(f"{len(pixels)} images but {len(ids)} questions: give one question per image")
    options = (("max_length", max_length), ("min_length", min_length), ("num_beams", num_beams))

    def fn(params, pixels, ids, mask):
      states = question_states(self.model, params, pixels, ids, mask)
      text = {"text": params["answer_decoder"]}
      return generate(text, self.config.text, states, jnp.zeros((0,), jnp.int32), method="beam", options=options)

    out_ids, lengths = self._batched(jax.jit(fn), pixels, ids, mask)
    return [self.tokenizer.decode(out_ids[r, 1 : lengths[r]]).strip() for r in range(len(out_ids))]

"""Tokenizers behind one interface: WordPiece (bert-base-uncased vocab + [DEC]/[ENC], through the
`tokenizers` library) and SentencePiece (trained on a corpus, same special tokens).

Both emit `[CLS] ... [SEP]` with padding/truncation to a fixed length; the models overwrite [CLS]
with [ENC] / [DEC] for the image-grounded modes (reference section 3).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterable, Sequence

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  pad: int
  cls: int
  sep: int
  mask: int
  dec: int  # [DEC], the decoder's bos
  enc: int  # [ENC]


class Tokenizer:
  """Common interface. `encode` -> (ids (B, L) int32, mask (B, L) int32)."""

  special: SpecialIds
  vocab_size: int

  def tokenize_ids(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode(self, texts: Sequence[str], max_length: int, pad_to_max: bool = True):
    """[CLS] + ids + [SEP], truncated to max_length (the [SEP] kept), padded with [PAD].

    pad_to_max=False pads to the longest in the batch instead (captioning uses "longest")."""
    if max_length < 2:
      raise ValueError(f"max_length={max_length}: needs room for [CLS] and [SEP]")
    rows = [[self.special.cls] + self.tokenize_ids(t)[: max_length - 2] + [self.special.sep] for t in texts]
    length = max_length if pad_to_max else max(len(r) for r in rows)
    ids = np.full((len(rows), length), self.special.pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
      ids[i, : len(r)] = r
      mask[i, : len(r)] = 1
    return ids, mask

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError


class WordPieceTokenizer(Tokenizer):
  """bert-base-uncased WordPiece from a vocab.txt, with [DEC] and [ENC] appended exactly as the official
  code adds them (ids 30522 and 30523 for the real 30522-entry vocab)."""

  def __init__(self, vocab_file: str, lowercase: bool = True):
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    if not os.path.exists(vocab_file):
      raise FileNotFoundError(f"WordPiece vocab not found: {vocab_file}")
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
      for i, line in enumerate(f):
        vocab[line.rstrip("\n")] = i
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
      raise ValueError(f"{vocab_file}: missing special tokens {missing}")
    tok = _Tok(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["[DEC]", "[ENC]"])
    self._tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.special = SpecialIds(
      pad=vocab["[PAD]"],
      cls=vocab["[CLS]"],
      sep=vocab["[SEP]"],
      mask=vocab["[MASK]"],
      dec=tok.token_to_id("[DEC]"),
      enc=tok.token_to_id("[ENC]"),
    )

  def tokenize_ids(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    # [CLS] / [SEP] / [PAD] / [MASK] are plain vocab entries to the `tokenizers` model, which would
    # print them: drop every special id explicitly (what transformers' skip_special_tokens does)
    sp = self.special
    specials = {sp.pad, sp.cls, sp.sep, sp.mask, sp.dec, sp.enc}
    return self._tok.decode([i for i in ids if i not in specials], skip_special_tokens=True)


class SentencePieceTokenizer(Tokenizer):
  """SentencePiece model with BLIP's special tokens at fixed ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
  [MASK]=4 [DEC]=5 [ENC]=6 (for from-scratch runs and the synthetic world)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm

    if not os.path.exists(model_file):
      raise FileNotFoundError(f"SentencePiece model not found: {model_file}")
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    ids = {t: self._sp.piece_to_id(t) for t in SPECIALS + ("[DEC]", "[ENC]")}
    if ids["[PAD]"] != 0 or ids["[UNK]"] != 1 or any(self._sp.id_to_piece(i) != t for t, i in ids.items()):
      raise ValueError(f"{model_file}: not trained by train_sentencepiece (special tokens misplaced)")
    self.vocab_size = self._sp.get_piece_size()
    self.special = SpecialIds(
      pad=0, cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"], dec=ids["[DEC]"], enc=ids["[ENC]"]
    )

  def tokenize_ids(self, text: str) -> list[int]:
    return self._sp.encode(text.lower())

  def decode(self, ids: Iterable[int]) -> str:
    specials = {0, self.special.cls, self.special.sep, self.special.mask, self.special.dec, self.special.enc}
    return self._sp.decode([i for i in ids if i not in specials])


def train_sentencepiece(texts: Iterable[str], model_file: str, vocab_size: int = 1000) -> SentencePieceTokenizer:
  """Train a lowercase unigram SentencePiece on `texts` with BLIP's special tokens; writes model_file."""
  import sentencepiece as spm

  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=(t.lower() for t in texts),
    model_writer=buf,
    vocab_size=vocab_size,
    model_type="unigram",
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    pad_piece="[PAD]",
    unk_piece="[UNK]",
    user_defined_symbols=["[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"],
    hard_vocab_limit=False,
    num_threads=1,
    minloglevel=2,
  )  # one thread: the same corpus always gives the same model
  with open(model_file, "wb") as f:
    f.write(buf.getvalue())
  return SentencePieceTokenizer(model_file)

"""Caption/question normalisation and tokenizers (WordPiece parity with transformers, SentencePiece)."""

import numpy as np
import pytest

from blip_jax.data.text import pre_caption, pre_question
from blip_jax.data.tokenizer import SentencePieceTokenizer, WordPieceTokenizer, train_sentencepiece


def test_pre_caption():
  assert pre_caption("A Dog (brown)  runs!!  on the grass.\n") == "a dog brown runs on the grass"
  assert pre_caption('He said: "hi"; ok~ #tag*') == "he said hi ok tag"
  assert pre_caption("one two three four", max_words=2) == "one two"
  assert pre_caption("") == ""


def test_pre_question():
  assert pre_question("What color is the cat?") == "what color is the cat?"
  assert pre_question("Is it (really) a dog...") == "is it really a dog"
  assert pre_question("a b c d e", max_words=3) == "a b c"


WORDS = [
  "the",
  "cat",
  "sat",
  "on",
  "mat",
  "dog",
  "play",
  "un",
  "hello",
  "world",
  "cafe",
  "naive",
  "resume",
  "a",
  "picture",
  "of",
  "##s",
  "##ing",
  "##believ",
  "##able",
  "##ed",
  "3",
  "14",
  "猫",
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-()")
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars[:36]] + WORDS
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
  return str(path)


TRICKY = [
  "Hello, world!!",
  "Café naïve RÉSUMÉ",
  "a" * 150,
  "",
  "猫 cat",
  "\t\n  cat  ",
  "unbelievable playing",
  "3.14 cats sat on 2 mats",
  "🐱 dog",
  "the cat " * 40,
  "don't stop-believing",
  "a picture of",
]


def test_wordpiece_ids_equal_bert_tokenizer_fast(vocab_file):
  import transformers  # a test dependency: fail, never skip, when it is missing

  ref = transformers.BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
  ref.add_special_tokens({"bos_token": "[DEC]"})  # exactly as the official BLIP init_tokenizer
  ref.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
  ours = WordPieceTokenizer(vocab_file)
  for length in (8, 30):
    want = ref(TRICKY, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    ids, mask = ours.encode(TRICKY, length)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
  assert ours.special.dec == ref.convert_tokens_to_ids("[DEC]")
  assert ours.special.enc == ref.convert_tokens_to_ids("[ENC]")
  # "longest" padding (captioning)
  ids, mask = ours.encode(["cat", "the cat sat"], 40, pad_to_max=False)
  assert ids.shape == (2, 5) and mask.sum() == 3 + 5
  # decoding drops every special token, as the official decode(skip_special_tokens=True): a generated
  # caption ends in [SEP] and may be padded
  ids, _ = ours.encode(["the cat sat"], 8)
  row = [ours.special.dec] + list(ids[0, 1:])
  assert ours.decode(row) == ref.decode(row, skip_special_tokens=True) == "the cat sat"


def test_wordpiece_special_ids_for_a_bert_sized_vocab(tmp_path):
  """bert-base-uncased layout: [PAD]=0, [unused*], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; 30522
  entries -> [DEC]=30522, [ENC]=30523, vocab 30524 (reference section 3)."""
  tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tokens += [f"tok{i}" for i in range(30522 - len(tokens))]
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n")
  tok = WordPieceTokenizer(str(path))
  s = tok.special
  assert (s.pad, s.cls, s.sep, s.mask, s.dec, s.enc, tok.vocab_size) == (0, 101, 102, 103, 30522, 30523, 30524)


def test_wordpiece_bad_vocab(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("[PAD]\nhello\n")
  with pytest.raises(ValueError, match=r"vocab.txt: missing special tokens \['\[UNK\]', '\[CLS\]'"):
    WordPieceTokenizer(str(path))
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    WordPieceTokenizer(str(tmp_path / "nope.txt"))


def test_sentencepiece_trained_with_blip_specials(tmp_path):
  rng = np.random.default_rng(0)
  colors, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
  corpus = [
    f"a {rng.choice(colors)} {rng.choice(shapes)} left of a {rng.choice(colors)} {rng.choice(shapes)}"
    for _ in range(500)
  ]
  tok = train_sentencepiece(corpus, str(tmp_path / "sp.model"), vocab_size=60)
  s = tok.special
  assert (s.pad, s.cls, s.sep, s.mask, s.dec, s.enc) == (0, 2, 3, 4, 5, 6)
  ids, mask = tok.encode(["A red circle left of a blue square", "green"], 12)
  assert ids.shape == (2, 12) and ids[0, 0] == s.cls and (ids[1, mask[1] == 0] == 0).all()
  assert ids[0, mask[0].sum() - 1] == s.sep
  full, _ = tok.encode(["A red circle left of a blue square"], 40)
  assert tok.decode(full[0]) == "a red circle left of a blue square"  # lossless round trip
  reloaded = SentencePieceTokenizer(str(tmp_path / "sp.model"))
  np.testing.assert_array_equal(reloaded.encode(["green"], 12)[0], tok.encode(["green"], 12)[0])

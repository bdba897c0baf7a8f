"""BLIP's caption and question normalisation (reference section 3; official data/utils.py)."""

from __future__ import annotations

import re

_PUNCT = re.compile(r"([.!\"()*#:;~])")


def pre_caption(caption: str, max_words: int = 50) -> str:
  """Lowercase; each of . ! " ( ) * # : ; ~ becomes a space; collapse space runs; strip; keep the
  first max_words words (30 for pretraining and retrieval, 40 for NLVR2)."""
  caption = _PUNCT.sub(" ", caption.lower())
  caption = re.sub(r"\s{2,}", " ", caption)
  caption = caption.rstrip("\n").strip(" ")
  words = caption.split(" ")
  return " ".join(words[:max_words]) if len(words) > max_words else caption


def pre_question(question: str, max_words: int = 50) -> str:
  """Lowercase; the same characters are deleted (no space inserted); right-strip; first max_words."""
  question = _PUNCT.sub("", question.lower()).rstrip(" ")
  words = question.split(" ")
  return " ".join(words[:max_words]) if len(words) > max_words else question

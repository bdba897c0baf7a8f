"""Caption metrics through pycocoevalcap's own scorers (what the COCO server and the official BLIP
evaluation run): PTB tokenisation, BLEU-1..4, ROUGE-L, CIDEr, and METEOR on request.

The PTB tokeniser and METEOR are Java programs shipped inside pycocoevalcap. Where `java` is missing,
captions are tokenised by `simple_tokenize` (lower case, PTB's punctuation removed: equal to the Java
tokeniser on plain captions, not on every contraction) and METEOR is skipped, both with a message.
SPICE is never run: it downloads Stanford CoreNLP models at first use, and runs here make no network
calls.
"""

from __future__ import annotations

import logging
import re
import shutil

# PTBTokenizer's punctuation list (pycocoevalcap/tokenizer/ptbtokenizer.py)
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def has_java() -> bool:
  return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
  """Lower-cased words with punctuation split off and dropped (the Java PTB tokeniser's output on
  ordinary captions)."""
  tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]+", text.lower().replace("\n", " "))
  return " ".join(t for t in tokens if t not in PUNCTUATION and not re.fullmatch(r"[^\w\s]+", t))


def tokenize(captions: dict, use_java: bool | None = None) -> dict:
  """{id: [caption, ...]} -> {id: [tokenised caption, ...]} (PTB through Java where available)."""
  if use_java is None:
    use_java = has_java()
  if use_java:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
  return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def score_tokenized(results: dict, references: dict, meteor: bool = False) -> dict:
  """Corpus scores of tokenised captions: results {id: [caption]}, references {id: [captions]}, same
  ids. -> {"Bleu_1".."Bleu_4", "ROUGE_L", "CIDEr"[, "METEOR"]} as pycocoevalcap reports them."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  if set(results) != set(references):
    raise ValueError(f"results and references name different images ({len(results)} vs {len(references)})")
  out = {}
  bleu, _ = Bleu(4).compute_score(references, results, verbose=0)
  out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
  out["ROUGE_L"] = float(Rouge().compute_score(references, results)[0])
  out["CIDEr"] = float(Cider().compute_score(references, results)[0])
  if meteor:
    from pycocoevalcap.meteor.meteor import Meteor

    out["METEOR"] = float(Meteor().compute_score(references, results)[0])
  return out


def score(results: dict, references: dict, meteor: bool = False) -> dict:
  """Raw captions {id: caption} and {id: [captions]} -> the scores of `score_tokenized`, tokenised
  like the COCO evaluation. METEOR only where Java exists (else skipped with a warning)."""
  java = has_java()
  if not java:
    logging.warning("java not found: PTB tokenisation approximated in python%s", ", METEOR skipped" if meteor else "")
  tokenized = tokenize(
    {**{("res", k): [v] for k, v in results.items()}, **{("ref", k): v for k, v in references.items()}}, java
  )
  res = {k: tokenized[("res", k)] for k in results}
  refs = {k: tokenized[("ref", k)] for k in references}
  return score_tokenized(res, refs, meteor=meteor and java)

"""VQA accuracy as the official VQA evaluation (vqaEval.py, which BLIP's results use): answers
normalised (punctuation, number words, articles, contractions), and per question the average over the
annotators of min(1, #other annotators who gave the answer / 3). With ten agreeing annotators that is
min(#matching / 3, 1) of all ten."""

from __future__ import annotations

import re

# the official table: misspelt contraction -> its spelling (space-separated "key=value" pairs)
_CONTRACTIONS = dict(
  pair.split("=", 1)
  for pair in (
    "aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've "
    "couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've "
    "hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd "
    "howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've "
    "it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've "
    "mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've "
    "oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't "
    "shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've "
    "shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've "
    "somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've "
    "someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd "
    "somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's thered=there'd "
    "thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've "
    "they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've "
    "we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've "
    "whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've "
    "wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've "
    "wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll "
    "yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've "
    "youll=you'll youre=you're youve=you've "
  ).split()
)
_NUMBERS = {
  "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
  "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official look-behind is written as a look-ahead
_COMMA = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
  out = text
  for p in _PUNCT:
    if p + " " in text or " " + p in text or _COMMA.search(text):
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=re.UNICODE)  # sic: the official passes re.UNICODE (32) as the count


def process_digit_article(text: str) -> str:
  words = [_NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_prediction(answer: str) -> str:
  """A model's answer as the official evaluation compares it."""
  answer = answer.replace("\n", " ").replace("\t", " ").strip()
  return process_digit_article(process_punctuation(answer))


def accuracy(prediction: str, annotations: list[str]) -> float:
  """VQA accuracy of one predicted answer against the annotators' answers (usually ten), in [0, 1]."""
  if not annotations:
    raise ValueError("a question without annotated answers cannot be scored")
  pred = normalize_prediction(prediction)
  gts = [process_punctuation(a) for a in annotations] if len(set(annotations)) > 1 else list(annotations)
  scores = []
  for i in range(len(gts)):
    matching = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
    scores.append(min(1.0, matching / 3.0))
  return sum(scores) / len(scores)

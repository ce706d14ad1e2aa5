"""The filters Self-Instruct keeps a growing instruction pool diverse and usable with.

A new instruction is kept only if it passes every filter, checked in this order (the
first that fails is the one counted):

- `empty`: nothing left after whitespace is collapsed.
- `length`: fewer than `min_words` or more than `max_words` whitespace-separated words
  (default 3 to 150, both kept; the reference scripts keep only 4 or more words:
  `min_words=4` reproduces them).
- `keyword`: asks for what a text model cannot do: a whole-word, case-insensitive
  "image(s)", "graph(s)", "picture(s)", "file(s)", "map(s)", "draw(ing)",
  "plot(ting)" or "go to".
- `write_a_program`: starts with "Write a program"; the paper's authors found a teacher
  tends to prepend it to existing tasks, leaving unclear whether code or an answer is
  wanted.
- `punctuation` / `non_ascii`: starts with a punctuation mark or a non-ASCII character
  (list debris, another language).
- `rouge`: ROUGE-L F1 of 0.7 or more against any instruction already in the pool.

ROUGE-L. Scores equal rouge-score's `RougeScorer(["rougeL"])` (no stemming), bit for
bit: the same tokenizer (lowercase, runs of anything but a-z0-9 split words, so
non-ASCII letters split words too), the same longest common subsequence, the same
float formula for F1. Comparing a candidate with every pool member costs one LCS
(O(m*n) in Python) per member, which at 10k instructions is seconds per candidate.
Instead the pool keeps each member's token ids and an inverted index, and two bounds
discard almost every member before any LCS: F1 = 2*LCS/(m+n), and the LCS is at most
the shorter length and at most the bag-of-words overlap (summed per word: the
smaller of the two counts). A member is checked exactly only when its bound reaches
the threshold; the bounds are loosened by 1e-9 so float rounding never discards a
member rouge-score would score at the threshold.
"""

import collections
import re
import string
from typing import Iterable, Sequence

import numpy as np
from rouge_score import tokenizers

THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150
KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
            "map", "maps", "draw", "drawing", "plot", "plotting", "go to")
_KEYWORD = re.compile(r"\b(" + "|".join(re.escape(k) for k in KEYWORDS) + r")\b", re.IGNORECASE)
FILTERS = ("empty", "length", "keyword", "write_a_program", "punctuation", "non_ascii",
           "rouge")
_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)


def clean(instruction: str) -> str:
  """Whitespace runs collapsed to one space, the ends stripped."""
  return re.sub(r"\s+", " ", instruction).strip()


def text_problem(instruction: str, min_words: int = MIN_WORDS,
                 max_words: int = MAX_WORDS) -> str | None:
  """The first filter before ROUGE-L that `instruction` (cleaned) fails, or None."""
  if not instruction:
    return "empty"
  if not min_words <= len(instruction.split()) <= max_words:
    return "length"
  if _KEYWORD.search(instruction):
    return "keyword"
  if instruction.lower().startswith("write a program"):
    return "write_a_program"
  if instruction[0] in string.punctuation:
    return "punctuation"
  if not instruction[0].isascii():
    return "non_ascii"
  return None


def rouge_tokens(text: str) -> list[str]:
  """rouge-score's tokens of `text` (its default tokenizer, no stemming)."""
  return _TOKENIZER.tokenize(text)


def lcs_length(a: Sequence, b: Sequence) -> int:
  """Length of the longest common subsequence (one row of the DP table at a time)."""
  if len(a) < len(b):
    a, b = b, a
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge_l_f1(target: Sequence, prediction: Sequence) -> float:
  """ROUGE-L F1 of two token sequences, as rouge-score computes it (float for float)."""
  if not target or not prediction:
    return 0.0
  lcs = lcs_length(target, prediction)
  precision, recall = lcs / len(prediction), lcs / len(target)
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


class _Postings:
  """The members holding one word, with its count in each: arrays grown by doubling, so
  a query reads them without converting Python lists."""

  def __init__(self):
    self._members = np.zeros(4, np.int32)
    self._counts = np.zeros(4, np.int32)
    self._size = 0

  def append(self, member: int, count: int) -> None:
    if self._size == len(self._members):
      self._members = np.resize(self._members, 2 * self._size)
      self._counts = np.resize(self._counts, 2 * self._size)
    self._members[self._size], self._counts[self._size] = member, count
    self._size += 1

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    return self._members[:self._size], self._counts[:self._size]


class RougePool:
  """Instructions whose ROUGE-L against any new one must stay below `threshold`."""

  def __init__(self, instructions: Iterable[str] = (), threshold: float = THRESHOLD):
    self.threshold = threshold
    self.texts: list[str] = []
    self._ids: dict[str, int] = {}  # word -> id
    self._tokens: list[list[int]] = []
    self._lengths: list[int] = []
    self._postings: dict[int, _Postings] = collections.defaultdict(_Postings)
    self.exact_checks = 0  # LCS computations the bounds did not spare
    for text in instructions:
      self.add(text)

  def __len__(self) -> int:
    return len(self.texts)

  def _encode(self, text: str, grow: bool) -> list[int]:
    ids = []
    for word in rouge_tokens(text):
      if word not in self._ids:
        if not grow:
          ids.append(-1)  # a word no member has: matches nothing
          continue
        self._ids[word] = len(self._ids)
      ids.append(self._ids[word])
    return ids

  def add(self, text: str) -> None:
    tokens = self._encode(text, grow=True)
    member = len(self.texts)
    self.texts.append(text)
    self._tokens.append(tokens)
    self._lengths.append(len(tokens))
    for word, count in collections.Counter(tokens).items():
      self._postings[word].append(member, count)

  def most_similar(self, text: str) -> tuple[float, int | None]:
    """(the highest ROUGE-L F1 of `text` against a member that could reach the
    threshold, that member's index); (0.0, None) when no member can."""
    tokens = self._encode(text, grow=False)
    if not tokens or not self.texts:
      return 0.0, None
    overlap = np.zeros(len(self.texts), np.int64)
    for word, count in collections.Counter(tokens).items():
      if word < 0:
        continue
      members, counts = self._postings[word].arrays()
      overlap[members] += np.minimum(counts, count)
    lengths = np.asarray(self._lengths)
    bound = 2 * np.minimum(overlap, np.minimum(lengths, len(tokens))) / (lengths + len(tokens))
    best, best_member = 0.0, None
    for member in np.flatnonzero(bound >= self.threshold - 1e-9):
      self.exact_checks += 1
      score = rouge_l_f1(self._tokens[member], tokens)
      if score > best:
        best, best_member = score, int(member)
    return best, best_member

  def too_similar(self, text: str) -> bool:
    return self.most_similar(text)[0] >= self.threshold


# Classification tasks get their instances output first (a label, then an input for
# it), so that labels are balanced rather than whatever an input happens to suggest.
# The paper asks the teacher (few-shot); this rule is the deterministic alternative,
# written against the 26 seed tasks the paper marks as classification.
_CLASSIFICATION = re.compile("|".join([
    r"\bclassif(y|ication)\b", r"\bcategor(y|ies)\b", r"\bsentiment\b", r"\blabels?\b",
    r"\b(tell|decide|determine|detect|identify|check|predict|find out|judge)( me)? "
    r"(if|whether|which)\b",
    r"\bwhether\b.*\bor not\b", r"\bor not\b", r"\b(yes or no|true or false|true, false)\b",
    r"\bmultiple[- ]choice\b", r"\bcandidates\b", r"\b(output|answer|respond with) "
    r"(yes|no|true|false|\d|\"|positive|negative|one of)",
    r"^(select|choose)\b", r"\bpos tag\b", r"\bfact[- ]check", r"^is (this|the|it)\b",
]), re.IGNORECASE)


def looks_like_classification(instruction: str) -> bool:
  """Whether the instruction asks for one of a few labels (a keyword rule)."""
  return bool(_CLASSIFICATION.search(instruction))

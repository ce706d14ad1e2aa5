"""The evaluation suites' n-grams as sorted arrays, built once and cached on disk.

`decontamination.NgramIndex` (a dict) serves the one-off report. A guard that runs
before every training run (and before curated data is written) wants the index
built once per evaluation suite and read back in a second, so this one is four
numpy arrays, one row per indexed n-gram occurrence:

  keys       uint64  the n-gram's blake2b hash (`decontamination.ngram_hash`), sorted
  texts      uint32  which eval text it occurs in
  positions  uint32  its word offset in that text
  (per text) lengths uint32 and sources uint16 (which eval task the text came from)

saved as one `.npz` (`allow_pickle=False`) beside a JSON description, under a name
that hashes everything the index depends on (`cache_key`). A lookup hashes a
training text's n-grams and finds them with `np.searchsorted`.

Two rules decide when a training text is contaminated (`RULES`):

- "13-gram" (GPT-3, FLAN; the default): it shares any word 13-gram with an eval
  text. Eval texts of 8-12 words count whole, as in `decontamination`.
- "8-gram" (open-instruct's decontamination for Tulu): the word 8-grams it shares
  with one eval text cover more than half of that eval text's words. Eval texts
  under 8 words are ignored. Sharing one boilerplate 8-gram is not enough, which
  is why the shorter n-gram needs the coverage threshold.

Text is normalised as in `decontamination.normalize` (lowercase, punctuation as
space), on both sides.

An eval text is what one scored example adds: the lines every prompt of a task
split repeats (few-shot exemplars, a header; `shared_prefix`) are left out, as
MMLU's exemplar split is. Otherwise GSM8K's 8-shot prompt would be ~700 words of
which a copied test question covers a tenth: the 8-gram rule's coverage could never
pass half, and the 13-gram rule would index the same exemplars once per example.
"""

import array
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from flan_jax import paths
from flan_jax.data import decontamination as dc
from flan_jax.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when what an index holds changes: old caches are then ignored
# 2: an eval task's shared prompt prefix (few-shot exemplars, header) is left out


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  n: int
  min_words: int  # eval texts with min_words..n-1 words are indexed whole
  coverage: float | None  # None: any shared n-gram; else share of the eval text's words


RULES = {
    "13-gram": Rule("13-gram", n=13, min_words=dc.MIN_WORDS, coverage=None),
    "8-gram": Rule("8-gram", n=8, min_words=8, coverage=0.5),
}


def get_rule(name: str) -> Rule:
  if name not in RULES:
    raise UserError(f"Unknown decontamination rule {name!r}; choose one of {sorted(RULES)}.")
  return RULES[name]


@dataclasses.dataclass(frozen=True)
class Hit:
  """Why a training text counts as contaminated."""
  source: str  # the eval task
  ngram: str  # the first shared n-gram, normalised words
  coverage: float  # share of the eval text's words the shared n-grams cover


class DecontaminationIndex:
  """Eval texts' n-grams under one `Rule`; `hit(text)` says whether a text is contaminated."""

  def __init__(self, rule: Rule, sources: Sequence[str], keys: np.ndarray, texts: np.ndarray,
               positions: np.ndarray, lengths: np.ndarray, text_sources: np.ndarray):
    order = np.argsort(keys, kind="stable")
    self.rule, self.sources = rule, list(sources)
    self.keys, self.texts, self.positions = keys[order], texts[order], positions[order]
    self.lengths, self.text_sources = lengths, text_sources
    # The gram lengths a training text is scanned with: n, and short eval texts' lengths.
    short = lengths[(lengths < rule.n) & (lengths >= rule.min_words)]
    self.gram_lengths = sorted({rule.n, *map(int, np.unique(short))})

  @classmethod
  def build(cls, texts: Iterable[tuple[str, str]], rule: Rule,
            sources: Sequence[str] = ()) -> "DecontaminationIndex":
    """Indexes (eval task, text) pairs; `sources` lists tasks even if they add nothing."""
    names = list(sources)
    # Typed arrays, not lists: 8 + 4 + 4 bytes a row instead of ~100 in Python ints.
    keys, text_ids, positions = array.array("Q"), array.array("I"), array.array("I")
    lengths, text_sources = array.array("I"), array.array("H")
    for source, text in texts:
      words = dc.normalize(text)
      grams = dc.ngrams(words, rule.n, rule.min_words)
      if not grams:
        continue
      if source not in names:
        names.append(source)
        if len(names) > np.iinfo(np.uint16).max:
          raise UserError(f"More than 65,535 eval tasks: index them in several groups.")
      text_id = len(lengths)
      lengths.append(len(words))
      text_sources.append(names.index(source))
      keys.extend(dc.ngram_hash(g) for g in grams)
      text_ids.extend([text_id] * len(grams))
      positions.extend(range(len(grams)))
    arrays = [np.frombuffer(a, dtype) if len(a) else np.zeros(0, dtype) for a, dtype in
              ((keys, np.uint64), (text_ids, np.uint32), (positions, np.uint32),
               (lengths, np.uint32), (text_sources, np.uint16))]
    return cls(rule, names, *arrays)

  def __len__(self) -> int:
    return len(self.keys)

  @property
  def num_texts(self) -> int:
    return len(self.lengths)

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in (self.keys, self.texts, self.positions, self.lengths,
                                  self.text_sources))

  # ------------------------------------------------------------------ lookups

  def hit(self, text: str) -> Hit | None:
    """Why `text` (a training example) is contaminated, or None when it is clean."""
    words = dc.normalize(text)
    grams = [(start, length) for length in self.gram_lengths
             for start in range(len(words) - length + 1)]
    if not grams or not len(self.keys):
      return None
    hashes = np.fromiter((dc.ngram_hash(words[s:s + l]) for s, l in grams), np.uint64, len(grams))
    lo = np.searchsorted(self.keys, hashes, "left")
    hi = np.searchsorted(self.keys, hashes, "right")
    found = np.flatnonzero(hi > lo)
    if not len(found):
      return None
    if self.rule.coverage is None:
      first = int(found[np.argmin([grams[i][0] for i in found])])  # earliest in the text
      start, length = grams[first]
      row = lo[first]
      return Hit(self.sources[self.text_sources[self.texts[row]]],
                 " ".join(words[start:start + length]), 1.0)
    return self._coverage_hit(words, grams, found, lo, hi)

  def _coverage_hit(self, words, grams, found, lo, hi) -> Hit | None:
    """The eval text whose words the shared n-grams cover most, if above the threshold.

    Vectorised: a boilerplate n-gram (a prompt's fixed first line) can occur in
    thousands of eval texts, so its rows are never walked in Python.
    """
    rows = np.concatenate([np.arange(lo[i], hi[i]) for i in found])
    # Each (eval text, position) once, sorted: the union of the n-word windows
    # starting there is the sum of min(n, gap to the next start) per text.
    occurrences = np.unique(self.texts[rows].astype(np.uint64) << np.uint64(32)
                            | self.positions[rows].astype(np.uint64))
    text_ids = (occurrences >> np.uint64(32)).astype(np.int64)
    starts = (occurrences & np.uint64(0xFFFFFFFF)).astype(np.int64)
    lengths = self.lengths[text_ids].astype(np.int64)
    same_text_next = np.append(text_ids[1:] == text_ids[:-1], False)
    next_start = np.append(starts[1:], 0)
    reach = np.where(same_text_next, next_start, lengths) - starts
    covered = np.minimum(reach, self.rule.n)
    texts, first = np.unique(text_ids, return_index=True)
    shares = np.add.reduceat(covered, first) / self.lengths[texts]
    best = int(np.argmax(shares))
    if shares[best] <= self.rule.coverage:
      return None
    best_text = int(texts[best])
    start, length = next(grams[i] for i in sorted(found, key=lambda i: grams[i][0])
                         if (self.texts[lo[i]:hi[i]] == best_text).any())
    return Hit(self.sources[self.text_sources[best_text]], " ".join(words[start:start + length]),
               float(shares[best]))

  def matches(self, text: str, first_only: bool = True) -> list[dc.Match]:
    """`NgramIndex.matches`'s answer for a contaminated text (so `NgramFilter` can use it)."""
    del first_only
    hit = self.hit(text)
    return [dc.Match(hit.ngram, (hit.source,))] if hit else []

  # ------------------------------------------------------------------ on disk

  def save(self, path: str, description: dict) -> None:
    """Writes `path`.npz and `path`.json (what the index covers), each atomically."""
    directory = os.path.dirname(path)
    paths.makedirs(directory)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, keys=self.keys, texts=self.texts, positions=self.positions,
             lengths=self.lengths, text_sources=self.text_sources)
    os.replace(tmp, f"{path}.npz")
    meta = {**description, "format": FORMAT_VERSION, "rule": self.rule.name,
            "sources": self.sources, "ngrams": len(self), "texts": self.num_texts}
    paths.write_json(f"{path}.json", meta, indent=1)

  @classmethod
  def load(cls, path: str) -> "DecontaminationIndex":
    meta = paths.read_json(f"{path}.json")
    with np.load(f"{path}.npz", allow_pickle=False) as arrays:
      return cls(get_rule(meta["rule"]), meta["sources"], arrays["keys"], arrays["texts"],
                 arrays["positions"], arrays["lengths"], arrays["text_sources"])

  def __repr__(self) -> str:
    return (f"DecontaminationIndex({self.rule.name}, {len(self):,} n-grams of "
            f"{self.num_texts:,} texts from {len(self.sources)} eval tasks)")


# ---------------------------------------------------------------- evaluation tasks


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                      "flan_jax", "decontamination")


def evaluation_splits(task) -> list[str]:
  """What an eval task is scored on: every split but "train" (MMLU's "train" holds the
  few-shot exemplars, which are not scored)."""
  return [s for s in task.splits if s != "train"]


def shared_prefix(texts: Sequence[str]) -> str:
  """The whole lines every one of `texts` begins with ('' for fewer than two texts):
  a task's few-shot exemplars and header, which no scored example owns."""
  if len(texts) < 2:
    return ""
  prefix = os.path.commonprefix(list(texts))
  return prefix[:prefix.rfind("\n") + 1]


def _example_texts(task, split: str, fields: Sequence[str], seed: int) -> Iterator[str]:
  """Each example's `fields`, less the lines all the split's examples share in that field."""
  rows = list(dc.task_texts(task, split, fields, seed=seed))
  prefixes = [shared_prefix([row[f] for row in rows]) for f in range(len(fields))]
  for row in rows:
    for prefix, text in zip(prefixes, row):
      yield text[len(prefix):]


def cache_key(task_sizes: dict[str, dict[str, int | None]], rule: Rule, seed: int) -> str:
  """Names everything an index depends on: eval tasks, their splits and sizes, the rule."""
  described = json.dumps({"tasks": task_sizes, "rule": dataclasses.asdict(rule), "seed": seed,
                          "format": FORMAT_VERSION}, sort_keys=True)
  return hashlib.sha256(described.encode()).hexdigest()[:20]


def _size(task, split: str) -> int | None:
  try:
    return int(task.num_input_examples(split))
  except Exception:  # a source that cannot count cheaply: the key goes by name only
    return None


def eval_index(against: str | Sequence[str], rule: str | Rule = "13-gram", *,
               cache_dir: str | None = None, seed: int = 0,
               fields: Sequence[str] = dc.EVAL_FIELDS) -> DecontaminationIndex:
  """The index of the named eval tasks and mixtures (their evaluation splits), from the
  cache when it holds one for exactly these tasks, sizes and rule; else built and cached."""
  rule = get_rule(rule) if isinstance(rule, str) else rule
  tasks = dc.resolve_tasks([against] if isinstance(against, str) else list(against))
  if not tasks:
    raise UserError(f"decontaminate_against={against!r} names no evaluation task.")
  sizes = {t.name: {s: _size(t, s) for s in evaluation_splits(t)} for t in tasks}
  unscored = [t.name for t in tasks if not sizes[t.name]]
  if unscored:
    raise UserError(f"Eval tasks {unscored} have only a 'train' split: nothing to "
                    "decontaminate against; name their evaluation tasks instead.")
  path = os.path.join(cache_dir or default_cache_dir(), f"{rule.name}-{cache_key(sizes, rule, seed)}")
  if paths.exists(f"{path}.npz") and paths.exists(f"{path}.json"):
    index = DecontaminationIndex.load(path)
    log.info("Decontamination index read from %s.npz: %r", path, index)
    return index
  started = time.perf_counter()

  def texts():
    for task in tasks:
      for split in sizes[task.name]:
        for text in _example_texts(task, split, fields, seed):
          yield task.name, text

  index = DecontaminationIndex.build(texts(), rule, [t.name for t in tasks])
  index.save(path, {"eval_tasks": sizes, "seed": seed})
  log.warning("Built the decontamination index in %.1f s: %r; cached at %s.npz.",
              time.perf_counter() - started, index, path)
  return index

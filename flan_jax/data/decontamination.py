"""Decontamination: word n-gram overlap between a training mixture and evaluation tasks.

A held-out evaluation means little if its examples, or long stretches of them, were
trained on. Following GPT-3 and FLAN, two texts overlap when they share a word
13-gram. This module indexes the evaluation tasks' n-grams, reports per training
task how many examples overlap (with samples and the matching n-gram, so a false
alarm is easy to spot), and can drop the overlapping examples from a task.

Normalisation. Text is lowercased, every run of punctuation (anything that is not a
letter, digit or whitespace, and the underscore) becomes a space, and the result is
split on whitespace. Replacing punctuation by a space rather than deleting it keeps
glued tokens apart ("3+4" is "3 4", "a,b" is "a b"), which matters for the list- and
arithmetic-style prompts of instruction data; since both sides are normalised alike,
"don't" -> "don t" costs nothing. Unicode letters and digits count as words.

Short texts. A text with at least `n` words contributes its word n-grams. A shorter
text would contribute nothing, so an eval example like "Is 45 an even number? yes"
could be copied verbatim into training unnoticed; instead a text with fewer than `n`
but at least `min_words` words (default 8) is indexed whole, as one shorter "n-gram".
Training texts are then also scanned with windows of those shorter lengths, so a
short eval text is caught when it appears anywhere inside a training example. Texts
under `min_words` words are ignored: answers like "yes" or "7" would otherwise match
almost everything. The rule is one-sided: a short *training* text that appears
inside a long *eval* text is not flagged (the eval side is what is indexed). With
`min_words >= n` short texts are never indexed.

Units. On the eval side each field (by default `inputs_pretokenized` and
`targets_pretokenized`) is a text of its own, so a short prompt is judged on its
own words and no n-gram spans the prompt/answer seam. On the training side an
example's inputs and targets are joined into one text, so an eval passage that a
training template splits across the two is still found.

Hashing. An n-gram is stored as the first 8 bytes of blake2b over its words joined
by spaces: a 64-bit int instead of a tuple of strings, and the same value in every
process (Python's `hash()` on str is salted per process). With 10^8 indexed n-grams
and 10^10 lookups the expected number of false matches from collisions is ~0.05.
Each n-gram also remembers which eval tasks produced it (a bit mask), which is what
lets the report say which eval task a training example hit; the index is therefore
a dict of int -> int, roughly 100 bytes per n-gram in CPython.

Templates. Examples are checked as rendered by the tasks' templates, with one
template drawn per example (deterministically for `seed`). A training run draws
with its own seed, so the report describes one rendering; the filter sees what is
actually trained on. Template boilerplate is shared across examples; if two tasks
share a boilerplate stretch of `n` words it shows up as the same n-gram hitting
many examples, which is why the report lists the most frequent matching n-grams.

Filtering. `make_filter` returns a seqio preprocessor that drops training examples
sharing any n-gram with the index. It is never silent: the filter object's
`counts` hold examples checked and dropped (cumulative over every pipeline that
uses it), the first drop is logged as a warning with the matching n-gram, further
warnings follow at 10, 100, 1000... drops, and a summary is logged whenever a pass
over a finite dataset ends. seqio repeats a task's source before its preprocessors,
so in an endless training stream the counts grow every epoch and the end-of-pass
summary never comes; the milestone warnings and `counts` still do. The check runs
in Python (`tf.numpy_function`), so a filtered task cannot be serialised into a
tf.data service or SavedModel graph.
"""

import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import re
import threading
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import registry, task_reader
from flan_jax.errors import UserError

log = logging.getLogger(__name__)

N = 13  # GPT-3's and FLAN's n-gram length
MIN_WORDS = 8
EVAL_FIELDS = ("inputs_pretokenized", "targets_pretokenized")
TRAIN_FIELDS = ("inputs_pretokenized", "targets_pretokenized")
FILTER_FIELDS = ("inputs", "targets")  # the filter runs before tokenization
_SNIPPET_CHARS = 160
_NON_WORD = re.compile(r"[\W_]+")  # punctuation, symbols and underscores

TaskRef = seqio.Task | str


# ---------------------------------------------------------------- words and n-grams


def normalize(text: str) -> list[str]:
  """Lowercased words with punctuation treated as whitespace."""
  return _NON_WORD.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], n: int = N, min_words: int = MIN_WORDS) -> list[tuple[str, ...]]:
  """Word n-grams; a text shorter than n counts whole if it has at least min_words words."""
  _check_lengths(n, min_words)
  if len(words) >= n:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  if len(words) >= min_words:
    return [tuple(words)]
  return []


def ngram_hash(gram: Sequence[str]) -> int:
  """A 64-bit hash of an n-gram that is the same in every process."""
  digest = hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big")


def _check_lengths(n: int, min_words: int) -> None:
  if n < 1 or min_words < 1:
    raise ValueError(f"n and min_words must be at least 1, got n={n}, min_words={min_words}.")


@dataclasses.dataclass(frozen=True)
class Match:
  ngram: str  # the matching words, space-joined
  sources: tuple[str, ...]  # the indexed sources (eval tasks) that contain it


class NgramIndex:
  """A set of hashed n-grams, each remembering which sources (eval tasks) it came from.

  Behaves as a set of ints for `in`, `len` and iteration. `lengths` holds every gram
  length present: `n`, plus the lengths of short texts indexed whole.
  """

  def __init__(self, n: int = N, min_words: int = MIN_WORDS):
    _check_lengths(n, min_words)
    self.n = n
    self.min_words = min_words
    self.sources: list[str] = []
    self.lengths: set[int] = set()
    self._owners: dict[int, int] = {}  # hash -> bit mask over self.sources

  def add(self, text: str, source: str = "texts") -> None:
    if source not in self.sources:
      self.sources.append(source)
    bit = 1 << self.sources.index(source)
    for gram in ngrams(normalize(text), self.n, self.min_words):
      key = ngram_hash(gram)
      self._owners[key] = self._owners.get(key, 0) | bit
      self.lengths.add(len(gram))

  def __contains__(self, key: object) -> bool:
    return key in self._owners

  def __len__(self) -> int:
    return len(self._owners)

  def __iter__(self) -> Iterator[int]:
    return iter(self._owners)

  def matches(self, text: str, first_only: bool = False) -> list[Match]:
    """The distinct indexed grams found in `text` (a training example), in text order."""
    words, lengths = normalize(text), sorted(self.lengths)
    found: dict[int, Match] = {}
    for start in range(len(words)):
      for length in lengths:
        if start + length > len(words):
          break
        gram = words[start:start + length]
        key = ngram_hash(gram)
        owners = self._owners.get(key)
        if owners is not None and key not in found:
          found[key] = Match(" ".join(gram), self._names(owners))
          if first_only:
            return list(found.values())
    return list(found.values())

  def _names(self, mask: int) -> tuple[str, ...]:
    return tuple(name for i, name in enumerate(self.sources) if mask >> i & 1)

  def __repr__(self) -> str:
    return (f"NgramIndex(n={self.n}, min_words={self.min_words}, {len(self)} grams from "
            f"{len(self.sources)} sources)")


def build_ngram_index(
    texts: Iterable[str], n: int = N, min_words: int = MIN_WORDS, source: str = "texts",
) -> NgramIndex:
  """Indexes the n-grams of `texts` (all attributed to `source`)."""
  index = NgramIndex(n, min_words)
  for text in texts:
    index.add(text, source)
  return index


# ---------------------------------------------------------------- reading tasks


def resolve_tasks(tasks: TaskRef | Sequence[TaskRef]) -> list[seqio.Task]:
  """Tasks, task names and mixture names -> the leaf tasks, deduplicated, in order."""
  refs = [tasks] if isinstance(tasks, (str, seqio.Task)) else list(tasks)
  resolved: dict[str, seqio.Task] = {}
  for ref in refs:
    for task in registry.leaf_tasks(ref) if isinstance(ref, str) else [ref]:
      resolved.setdefault(task.name, task)
  return list(resolved.values())


def _to_text(value) -> str:
  value = np.asarray(value)
  if value.dtype.kind in "SO":
    items = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
             for v in value.reshape(-1)]
    return " ".join(items)
  return " ".join(str(v) for v in value.reshape(-1))


def _field_text(example: Mapping[str, np.ndarray], field: str, task: seqio.Task) -> str:
  if field in example:
    return _to_text(example[field])
  # A task that does not keep `*_pretokenized` copies: decode the tokens instead.
  base = field.removesuffix("_pretokenized")
  if base in example and base in task.output_features:
    value = np.asarray(example[base])
    if value.dtype.kind in "iu":
      return task.output_features[base].vocabulary.decode(value.tolist())
    return _to_text(value)
  raise UserError(
      f"Task {task.name!r} has no field {field!r} to check for contamination; its "
      f"examples have {sorted(example)}. Pass fields=... naming text fields.")


def task_texts(
    task: seqio.Task, split: str, fields: Sequence[str], max_examples: int | None = None,
    seed: int = 0,
) -> Iterator[list[str]]:
  """Each example's `fields` as strings, rendered with a fixed seed so runs agree."""
  if split not in task.splits:
    raise UserError(
        f"Task {task.name!r} has no {split!r} split (it has {list(task.splits)}); "
        "choose another split for the contamination check.")
  examples = task_reader.task_examples(task, split, sequence_length=None, seed=seed,
                                       shuffle=False)
  for example in itertools.islice(examples, max_examples):
    yield [_field_text(example, field, task) for field in fields]


def eval_ngram_index(
    eval_tasks: TaskRef | Sequence[TaskRef],
    split: str = "validation",
    fields: Sequence[str] = EVAL_FIELDS,
    n: int = N,
    max_examples: int | None = None,
    *,
    min_words: int = MIN_WORDS,
    seed: int = 0,
) -> NgramIndex:
  """Indexes every field of the eval tasks' examples, each field as its own text."""
  index = NgramIndex(n, min_words)
  for task in resolve_tasks(eval_tasks):
    index.sources.append(task.name)  # listed even when it contributes no grams
    for texts in task_texts(task, split, fields, max_examples, seed):
      for text in texts:
        index.add(text, task.name)
  return index


# ---------------------------------------------------------------- the report


@dataclasses.dataclass
class OverlapExample:
  inputs: str
  targets: str
  ngram: str  # the first matching n-gram (normalised words)
  eval_tasks: list[str]


@dataclasses.dataclass
class TaskOverlap:
  task: str
  checked: int = 0
  overlapping: int = 0
  eval_tasks_hit: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: list[OverlapExample] = dataclasses.field(default_factory=list)

  @property
  def fraction(self) -> float:
    return self.overlapping / self.checked if self.checked else 0.0


@dataclasses.dataclass
class ContaminationReport:
  n: int
  min_words: int
  train_split: str
  eval_tasks: list[str]
  index_size: int
  tasks: list[TaskOverlap]
  # Training examples that hit each eval task (one example may hit several).
  eval_task_hits: dict[str, int]
  # The matching n-grams shared by the most training examples: boilerplate shows here.
  top_ngrams: list[tuple[str, int]]

  @property
  def checked(self) -> int:
    return sum(t.checked for t in self.tasks)

  @property
  def overlapping(self) -> int:
    return sum(t.overlapping for t in self.tasks)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "checked": self.checked, "overlapping": self.overlapping}

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  def format_table(self) -> str:
    name_width = max([len("task"), len("total"), *(len(t.task) for t in self.tasks)])
    short = (f"eval texts of {self.min_words}-{self.n - 1} words count whole"
             if self.min_words < self.n else "shorter eval texts ignored")
    lines = [
        f"Contamination check: {self.n}-grams ({short}), {self.train_split!r} split against "
        f"{len(self.eval_tasks)} eval task(s), {self.index_size:,} n-grams indexed.",
        f"{'task':<{name_width}}  {'checked':>8}  {'overlap':>8}  {'%':>7}  eval tasks hit",
    ]
    for t in self.tasks:
      hits = ", ".join(f"{name} ({count})" for name, count in _by_count(t.eval_tasks_hit))
      lines.append(f"{t.task:<{name_width}}  {t.checked:>8,}  {t.overlapping:>8,}  "
                   f"{100 * t.fraction:>6.2f}%  {hits or '-'}")
    fraction = self.overlapping / self.checked if self.checked else 0.0
    lines.append(f"{'total':<{name_width}}  {self.checked:>8,}  {self.overlapping:>8,}  "
                 f"{100 * fraction:>6.2f}%")
    if self.eval_task_hits:
      lines.append("Eval tasks hit (training examples): " + ", ".join(
          f"{name} {count:,}" for name, count in _by_count(self.eval_task_hits)))
    if self.top_ngrams:
      lines.append("Most shared n-grams:")
      lines += [f"  {count:>6,}  {gram!r}" for gram, count in self.top_ngrams]
    samples = [(t.task, e) for t in self.tasks for e in t.examples]
    if samples:
      lines.append("Samples:")
      for task, e in samples:
        lines.append(f"  {task}: {e.inputs!r} -> {e.targets!r}")
        lines.append(f"    shares {e.ngram!r} with {', '.join(e.eval_tasks)}")
    return "\n".join(lines)


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
  return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _snippet(text: str) -> str:
  return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS - 3] + "..."


def contamination_report(
    train: TaskRef | Sequence[TaskRef],
    eval_tasks: TaskRef | Sequence[TaskRef] | None = None,
    n: int | None = None,
    split: str = "train",
    max_examples_per_task: int | None = None,
    *,
    eval_split: str = "validation",
    max_eval_examples: int | None = None,
    min_words: int = MIN_WORDS,
    index: NgramIndex | None = None,
    fields: Sequence[str] = TRAIN_FIELDS,
    num_samples: int = 3,
    num_top_ngrams: int = 10,
    seed: int = 0,
) -> ContaminationReport:
  """Checks every training example of `train` against the eval tasks' n-grams.

  `train` and `eval_tasks` take tasks, task names or mixture names. Pass a prebuilt
  `index` (from `eval_ngram_index`) instead of `eval_tasks` to reuse it; `n`
  defaults to the index's, or 13.
  """
  index = _get_index(index, eval_tasks, n, eval_split, min_words, max_eval_examples, seed)
  overlaps, eval_hits, gram_counts = [], collections.Counter(), collections.Counter()
  for task in resolve_tasks(train):
    overlap = TaskOverlap(task.name)
    task_hits = collections.Counter()
    for inputs, targets in task_texts(task, split, fields, max_examples_per_task, seed):
      overlap.checked += 1
      matches = index.matches(f"{inputs}\n{targets}")
      if not matches:
        continue
      overlap.overlapping += 1
      hit = sorted({name for m in matches for name in m.sources})
      task_hits.update(hit)
      gram_counts.update(m.ngram for m in matches)
      if len(overlap.examples) < num_samples:
        overlap.examples.append(OverlapExample(
            _snippet(inputs), _snippet(targets), matches[0].ngram, hit))
    overlap.eval_tasks_hit = dict(_by_count(task_hits))
    eval_hits.update(task_hits)
    overlaps.append(overlap)
  return ContaminationReport(
      n=index.n, min_words=index.min_words, train_split=split, eval_tasks=list(index.sources),
      index_size=len(index), tasks=overlaps, eval_task_hits=dict(_by_count(eval_hits)),
      top_ngrams=gram_counts.most_common(num_top_ngrams))


# ---------------------------------------------------------------- filtering


@dataclasses.dataclass
class FilterCounts:
  """What a filter has seen; cumulative over every pipeline (and epoch) it runs in."""
  checked: int = 0
  dropped: int = 0
  eval_task_hits: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __str__(self) -> str:
    return f"dropped {self.dropped:,} of {self.checked:,} examples checked"


class NgramFilter:
  """A seqio preprocessor dropping examples that share an n-gram with the index.

  Place it after template rendering and before tokenization: it reads `fields` as
  strings. `counts` says how many examples it checked and dropped.
  """

  def __init__(self, index: NgramIndex, fields: Sequence[str] = FILTER_FIELDS, name: str = ""):
    self.index = index
    self.fields = tuple(fields)
    self.name = name or "decontamination filter"
    self.counts = FilterCounts()
    self._lock = threading.Lock()  # tf.data may run several pipelines' filters at once

  def __call__(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    spec = dataset.element_spec
    for field in self.fields:
      if field not in spec:
        raise UserError(f"{self.name}: examples have no field {field!r} (they have "
                        f"{sorted(spec)}); pass fields=... naming the text fields.")
      if spec[field].dtype != tf.string:
        raise UserError(
            f"{self.name}: field {field!r} is {spec[field].dtype.name}, not text. Put the "
            "filter before seqio.preprocessors.tokenize, or filter the "
            "'*_pretokenized' fields.")

    def predicate(example):
      keep = tf.numpy_function(
          self._keep, [example[field] for field in self.fields], tf.bool, stateful=True)
      return tf.ensure_shape(keep, [])

    return _call_at_end(dataset.filter(predicate), self._log_summary)

  def _keep(self, *values) -> np.bool_:
    matches = self.index.matches("\n".join(_to_text(v) for v in values), first_only=True)
    with self._lock:
      self.counts.checked += 1
      if not matches:
        return np.bool_(True)
      self.counts.dropped += 1
      self.counts.eval_task_hits.update(matches[0].sources)
      dropped = self.counts.dropped
      message = str(self.counts)
    if dropped == 1:
      log.warning("%s: dropped an example sharing %r with %s (%s so far).", self.name,
                  matches[0].ngram, ", ".join(matches[0].sources), message)
    elif _is_power_of_ten(dropped):
      log.warning("%s: %s so far.", self.name, message)
    return np.bool_(False)

  def _log_summary(self) -> None:
    with self._lock:
      message, hits = str(self.counts), dict(self.counts.eval_task_hits)
    log.warning("%s: end of a pass, %s in total; eval tasks hit: %s.", self.name, message,
                hits or "none")


def _is_power_of_ten(count: int) -> bool:
  while count % 10 == 0:
    count //= 10
  return count == 1


def _call_at_end(dataset: tf.data.Dataset, fn) -> tf.data.Dataset:
  """`dataset`, then a call to `fn` once it is exhausted; adds no elements."""
  specs = tf.nest.flatten(dataset.element_spec)
  if not all(isinstance(spec, tf.TensorSpec) for spec in specs):
    return dataset  # ragged or sparse features: no placeholder to build; counts still work

  def call(_):
    fn()
    return np.bool_(False)

  def placeholder(spec: tf.TensorSpec) -> tf.Tensor:
    shape = [] if spec.shape.rank is None else [d or 0 for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)

  tail = tf.data.Dataset.range(1).filter(
      lambda i: tf.ensure_shape(tf.numpy_function(call, [i], tf.bool, stateful=True), []))
  tail = tail.map(lambda _: tf.nest.map_structure(placeholder, dataset.element_spec))
  return dataset.concatenate(tail)


def _get_index(
    index: NgramIndex | None, eval_tasks, n: int | None, eval_split: str, min_words: int,
    max_eval_examples: int | None, seed: int,
) -> NgramIndex:
  if index is not None:
    if n is not None and n != index.n:
      raise ValueError(f"The index holds {index.n}-grams but n={n} was asked for.")
    return index
  if eval_tasks is None:
    raise ValueError("Pass eval_tasks, or a prebuilt index from eval_ngram_index.")
  return eval_ngram_index(eval_tasks, eval_split, n=N if n is None else n,
                          max_examples=max_eval_examples, min_words=min_words, seed=seed)


def make_filter(
    index: NgramIndex, n: int | None = None, fields: Sequence[str] = FILTER_FIELDS,
    name: str = "",
) -> NgramFilter:
  """A seqio preprocessor dropping examples whose `fields` share an n-gram with `index`."""
  if n is not None and n != index.n:
    raise ValueError(f"The index holds {index.n}-grams but n={n} was asked for.")
  return NgramFilter(index, fields, name)


_TOKENIZERS = (seqio.preprocessors.tokenize, seqio.preprocessors.tokenize_and_append_eos)


def _is_tokenizer(preprocessor) -> bool:
  return getattr(preprocessor, "func", preprocessor) in _TOKENIZERS


def decontaminated_task(
    task_name: str,
    eval_tasks: TaskRef | Sequence[TaskRef] | None = None,
    new_name: str | None = None,
    n: int | None = None,
    *,
    index: NgramIndex | None = None,
    eval_split: str = "validation",
    min_words: int = MIN_WORDS,
    position: int | None = None,
) -> seqio.Task:
  """Registers a copy of `task_name` (default name `<task>_decontaminated`) with the filter.

  The filter goes right before the first tokenize preprocessor, i.e. after the
  templates have rendered `inputs`/`targets`; pass `position` (an index into the
  task's preprocessors) for tasks that tokenize differently. Pass a prebuilt
  `index` to decontaminate many tasks against the same eval tasks cheaply. The
  filter's counts are at `get_filter(task).counts`.
  """
  task = seqio.TaskRegistry.get(task_name)
  new_name = new_name or f"{task_name}_decontaminated"
  index = _get_index(index, eval_tasks, n, eval_split, min_words, None, seed=0)
  preprocessors = list(task.preprocessors)
  if position is None:
    position = next((i for i, p in enumerate(preprocessors) if _is_tokenizer(p)), None)
    if position is None:
      raise UserError(
          f"Task {task_name!r} has no seqio.preprocessors.tokenize step to put the "
          "decontamination filter before; pass position=<index into its preprocessors> "
          "where `inputs` and `targets` are rendered strings.")
  preprocessors.insert(position, make_filter(index, name=f"{new_name} decontamination"))
  copy = task.replace(name=new_name, preprocessors=preprocessors)
  seqio.TaskRegistry.add_provider(new_name, copy)
  return copy


def get_filter(task: seqio.Task | str) -> NgramFilter:
  """The decontamination filter inside a task made by `decontaminated_task`."""
  task = seqio.TaskRegistry.get(task) if isinstance(task, str) else task
  for preprocessor in task.preprocessors:
    if isinstance(preprocessor, NgramFilter):
      return preprocessor
  raise ValueError(f"Task {task.name!r} has no decontamination filter.")

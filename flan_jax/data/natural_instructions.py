"""Natural Instructions (NI v2) task files -> FLAN-style seqio tasks, one per file.

    register_ni_directory("natural-instructions/tasks")  # -> ["ni_task001_...", ...]

Every `*.json` file in the directory is one NI task: a header (`Definition`,
`Categories`, `Positive Examples`, ...) followed by `Instances` [{id, input, output:
[str, ...]}]. Each file becomes a mixture `<prefix><file stem>` over two tasks:

  `<name>_zs_noopt`  the definition and the input, in one of ZERO_SHOT_TEMPLATES
  `<name>_fs_noopt`  NI's own few-shot format: the definition once, then the task's
                     first `k_positive` *Positive Examples* (written by the task
                     authors, not drawn from the train split), then the input
                     (FEW_SHOT_TEMPLATES). Only tasks with positive examples get it.

Registration reads headers only. The full allenai/natural-instructions clone has
1,600+ files of up to tens of MB, almost all of it `Instances`, which NI writes last.
`read_header` reads the file in chunks until the top-level key `"Instances":`
appears and parses the text before it closed with `}`: a few KB per file. A JSON
string cannot hold an unescaped quote, so the key pattern cannot match inside a
value; when the trick still fails (Instances not last, a nested "Instances" key)
the whole file is parsed instead. Instances are read on first use and cached per
file, shared by both splits and both variants.

Splits. NI files have no train/validation split (its official split is over tasks,
not instances), so we make one: validation is the ceil(`validation_fraction` * n)
instances, at most `max_validation_instances` (SuperNI evaluates 100 per task) and at
least one when n >= 2, whose key hashes lowest; the rest is train. The key is the
instance `id`, or its input when the file has no ids (older NI files). The hash is
blake2b of the key alone, so the split does not depend on file order and an input
shared by related tasks (SCAN's variants) tends to land on the same side in each.
Instances with equal keys go to the same side, so a duplicated input never leaks
across. `max_instances_per_task` caps the train split with the next-lowest hashes (a
uniform sample rather than the head of the file). Both splits keep file order.

References. Training targets the first reference output; `outputs` holds them all
and reaches the metric through `FlanTaskSpec.target_field` (the `references`
feature), so a prediction is scored against its best reference.

Metrics. NI tasks show no answer options, so every task is scored as generation,
with SuperNI's two metrics, ROUGE-L and (normalised) exact match (NI_METRICS;
`metric_fns=` replaces them).

Edge cases. A positive example whose input equals the query's is skipped (NI often
copies positives from the instances, which would hand the model its answer).
Positive examples' explanations are not shown: SuperNI found they do not help.
Exemplars are dropped, last first, until the prompt fits the run's input length (and `few_shot_token_budget`, if set).
No answer options are shown: they would need the instances at registration.

Errors. A file that is not an NI task (bad JSON, not an object, Definition missing or
empty, malformed Categories or Positive Examples, no Instances) raises `UserError`
naming the file and the problem; with `on_error="skip"` it is left out and counted
in one warning. Problems found when the instances load (bad JSON inside them, an
instance without input or output) raise on first use, or skip that instance with
`on_error="skip"`; a file without a usable instance always raises.
"""

import codecs
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import re
import threading
import time
from typing import Any, Callable, Literal, Mapping, Sequence

from absl import logging
import seqio
import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.templates import Template
from flan_jax.data.variants import FewShot
from flan_jax.data.vocabularies import default_vocabulary
from flan_jax.errors import UserError
from flan_jax.metrics import normalized_exact_match, rouge_l

OnError = Literal["raise", "skip"]
Record = dict[str, Any]

# Our own phrasings; records have `definition`, `input`, `output` (first reference).
ZERO_SHOT_TEMPLATES = (
    Template("Definition: {definition}\n\nInput: {input}\nOutput:", "{output}"),
    Template("{definition}\n\n{input}", "{output}"),
    Template("Instructions: {definition}\n\nQ: {input}\nA:", "{output}"),
    Template("Task: {definition}\n\nInstance: {input}\nSolution:", "{output}"),
    Template("{input}\n\nRespond to the text above as follows. {definition}", "{output}"),
    Template("Read the task description, then respond to the input.\n\nTask description: "
             "{definition}\n\nInput: {input}\n\nResponse:", "{output}"),
)

# (prompt, one demonstration). `{examples}` is the demonstrations joined, each ending
# in a blank line, or "" when none fit; so no prompt announces examples it may lack.
FEW_SHOT_TEMPLATES = (
    ("Definition: {definition}\n\n{examples}Now complete the following example.\nInput: {input}\nOutput:",
     "Positive example {number}:\nInput: {input}\nOutput: {output}\n\n"),
    ("{definition}\n\n{examples}{input}", "{input}\n{output}\n\n"),
    ("Instructions: {definition}\n\n{examples}Q: {input}\nA:", "Q: {input}\nA: {output}\n\n"),
    ("Task: {definition}\n\n{examples}Instance: {input}\nSolution:",
     "Solved instance {number}: {input}\nSolution: {output}\n\n"),
    ("Read the task description, then respond to the input.\n\nTask description: {definition}"
     "\n\n{examples}Input: {input}\n\nResponse:", "Example input: {input}\nExample response: {output}\n\n"),
)

# NI v2 categories (and the older files' coarser ones) -> FLAN-style clusters.
CATEGORY_CLUSTERS: Mapping[str, str] = {
    "Question Answering": "qa", "Answer Generation": "qa",
    "Textual Entailment": "nli",
    "Paraphrasing": "paraphrase",
    "Sentiment Analysis": "sentiment",
    "Text Categorization": "classification", "Classification": "classification",
    "Toxic Language Detection": "toxicity",
    "Commonsense Classification": "commonsense",
    "Coreference Resolution": "coreference",
    "Summarization": "summarization", "Title Generation": "summarization",
    "Translation": "translation",
    "Data to Text": "struct_to_text",
    "Program Execution": "program_execution",
    "Mathematics": "math",
    "Question Generation": "question_generation",
    "Dialogue Generation": "dialogue", "Dialogue Act Recognition": "dialogue",
    "Dialogue State Tracking": "dialogue",
    "Grammar Error Correction": "grammar", "Grammar Error Detection": "grammar",
    "Text to Code": "code", "Code to Text": "code",
}

NI_METRICS: tuple[Callable, ...] = (rouge_l, normalized_exact_match)

_INSTANCES_KEY = re.compile(r'"Instances"\s*:')
_CHUNK_BYTES = 1 << 16  # real headers are 2-5 KB: one read
_READER_THREADS = 16


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def default_cluster(categories: Sequence[str]) -> str:
  """The first category with a known cluster, else `ni_<first category>`."""
  for category in categories:
    if category in CATEGORY_CLUSTERS:
      return CATEGORY_CLUSTERS[category]
  return f"ni_{_slug(categories[0]) or 'uncategorized'}" if categories else "ni_uncategorized"


@dataclasses.dataclass(frozen=True)
class NIHeader:
  path: str
  definition: str
  categories: tuple[str, ...]
  positives: tuple[tuple[str, str], ...]  # (input, output) of each positive example


def read_header(path: str) -> NIHeader:
  """The task's header without parsing its instances; UserError if it is not an NI task."""
  document = _header_document(path)
  if document is None:  # the prefix trick failed: parse the whole file
    document = _parse(_read_text(path), path)
    if isinstance(document, dict) and "Instances" not in document:
      raise UserError(f"{path}: no \"Instances\" key (top level: {sorted(document)[:12]}); an NI "
                      "task file lists its examples under \"Instances\": [{\"input\", \"output\"}].")
  return _validate_header(document, path)


def _header_document(path: str) -> dict | None:
  """The top-level object before `"Instances":`, or None when that does not parse."""
  decoder = codecs.getincrementaldecoder("utf-8-sig")()
  parts: list[str] = []
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK_BYTES)
      tail = parts[-1][-32:] if parts else ""  # the key may straddle two chunks
      try:
        parts.append(decoder.decode(chunk, final=not chunk))
      except UnicodeDecodeError:
        return None  # the full read says where
      match = _INSTANCES_KEY.search(tail + parts[-1])
      if match:
        start = sum(len(p) for p in parts[:-1]) - len(tail) + match.start()
        prefix = "".join(parts)[:start].rstrip().removesuffix(",")
        try:
          document = json.loads(prefix + "}")
        except json.JSONDecodeError:
          return None
        # Keys written after Instances would be missed: parse fully to see them.
        return document if isinstance(document, dict) and "Definition" in document else None
      if not chunk:
        return None


def _read_text(path: str) -> str:
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}, line {line}: not UTF-8 ({e.reason}). Re-encode the file as UTF-8.") from None


def _parse(text: str, path: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg}). "
                    "Fix the file (`python -m json.tool FILE` finds the spot) or remove it.") from None


def _strings(value: Any) -> list[str] | None:
  """A string or a list of strings as a list; None for anything else."""
  values = [value] if isinstance(value, str) else value
  if isinstance(values, list) and all(isinstance(v, str) for v in values):
    return values
  return None


def _validate_header(document: Any, path: str) -> NIHeader:
  if not isinstance(document, dict):
    raise UserError(f"{path}: the top level is a {type(document).__name__}; an NI task file is "
                    "an object with \"Definition\" and \"Instances\".")
  if "Definition" not in document:
    raise UserError(f"{path}: no \"Definition\" (keys: {sorted(document)[:12]}). Every NI task "
                    "needs its instruction as \"Definition\": [\"...\"].")
  definition = _strings(document["Definition"])  # NI v2 writes a one-element list
  if definition is None or not "\n".join(definition).strip():
    raise UserError(f"{path}: \"Definition\" must be a non-empty string or list of strings, got "
                    f"{json.dumps(document['Definition'])[:60]}.")
  categories = _strings(document.get("Categories", []))
  if categories is None:
    raise UserError(f"{path}: \"Categories\" must be a list of strings, got "
                    f"{json.dumps(document['Categories'])[:60]}.")
  positives = []
  for index, example in enumerate(document.get("Positive Examples") or []):
    outputs = _strings(example.get("output")) if isinstance(example, dict) else None
    if not (outputs and isinstance(example.get("input"), str)):
      raise UserError(f"{path}: \"Positive Examples\"[{index}] must be an object with string "
                      f"\"input\" and \"output\", got {json.dumps(example)[:80]}.")
    positives.append((example["input"], outputs[0]))
  return NIHeader(path, "\n".join(definition).strip(), tuple(categories), tuple(positives))


def _key_hash(key: str) -> int:
  return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def split_indices(keys: Sequence[str], validation_fraction: float, max_validation: int
                  ) -> tuple[list[int], list[int]]:
  """(train, validation) indices, in order: validation is the lowest-hashing keys."""
  n = len(keys)
  hashes = [_key_hash(k) for k in keys]
  wanted = min(max_validation, math.ceil(validation_fraction * n), n - 1)
  wanted = max(wanted, 1 if n >= 2 and validation_fraction > 0 and max_validation > 0 else 0)
  if wanted <= 0:
    return list(range(n)), []
  cutoff = sorted(hashes)[wanted - 1]  # <= keeps equal keys together
  validation = [i for i in range(n) if hashes[i] <= cutoff]
  train = [i for i in range(n) if hashes[i] > cutoff]
  return train, validation


class NIInstances:
  """A file's instances as records per split, read on first use and kept."""

  def __init__(self, header: NIHeader, *, validation_fraction: float, max_validation: int,
               max_train: int | None, on_error: OnError):
    self._header, self._on_error = header, on_error
    self._validation_fraction, self._max_validation = validation_fraction, max_validation
    self._max_train = max_train
    self._splits: dict[str, list[Record]] | None = None
    self._lock = threading.Lock()  # tf.data may ask for both splits from two threads

  def __call__(self, split: str) -> list[Record]:
    with self._lock:
      if self._splits is None:
        self._splits = self._load()
    return self._splits[split]

  def _load(self) -> dict[str, list[Record]]:
    path, definition = self._header.path, self._header.definition
    document = _parse(_read_text(path), path)
    instances = document.get("Instances") if isinstance(document, dict) else None
    if not isinstance(instances, list):
      raise UserError(f"{path}: \"Instances\" must be a list of {{\"input\", \"output\"}} objects.")
    records, keys, problems = [], [], []
    for index, instance in enumerate(instances):
      outputs = _strings(instance.get("output")) if isinstance(instance, dict) else None
      outputs = [o for o in outputs or [] if o.strip()]
      if not (outputs and isinstance(instance.get("input"), str)):
        problem = (f"{path}: Instances[{index}] needs a string \"input\" and a non-empty "
                   f"\"output\" list, got {json.dumps(instance)[:80]}.")
        if self._on_error == "raise":
          raise UserError(problem + " Fix it, or pass on_error='skip' to drop such instances.")
        problems.append(problem)
        continue
      records.append({"definition": definition, "input": instance["input"],
                      "output": outputs[0], "outputs": outputs})
      keys.append(str(instance.get("id") or instance["input"]))
    if problems:
      logging.warning("Skipped %d malformed instance(s) of %s, e.g. %s", len(problems), path, problems[0])
    if not records:
      raise UserError(f"{path}: no usable instances ({len(instances)} in the file).")
    train, validation = split_indices(keys, self._validation_fraction, self._max_validation)
    if self._max_train is not None and len(train) > self._max_train:
      train = sorted(sorted(train, key=lambda i: _key_hash(keys[i]))[:self._max_train])
    return {"train": [records[i] for i in train], "validation": [records[i] for i in validation]}


@dataclasses.dataclass(frozen=True)
class PositiveExamplesFewShot(FewShot):
  """NI's few-shot: the task's positive examples as exemplars, the definition once.

  A FewShot so that RenderedSource passes `count_tokens`; the train-split exemplars
  it also passes are ignored. `templates[i]` uses {examples}, rendered with
  `example_formats[i]` per positive example.
  """
  example_formats: tuple[str, ...] = ()
  positives: tuple[tuple[str, str], ...] = ()

  def render(self, record, rng, *, count_tokens=len, **context):
    index = rng.randrange(len(self.templates))
    template, example = self.templates[index], self.example_formats[index]
    query = record["input"].strip()
    chosen = [p for p in self.positives if p[0].strip() != query][:self.k]
    shots = [example.format(number=n, input=i, output=o) for n, (i, o) in enumerate(chosen, 1)]
    while True:
      inputs, targets = template.render({**record, "examples": "".join(shots)})
      if not shots or self.token_budget is None or count_tokens(inputs) <= self.token_budget:
        return inputs, targets, index
      shots.pop()


def _header_or_error(path: str) -> NIHeader | UserError:
  try:
    return read_header(path)
  except UserError as e:
    return e


def register_ni_directory(directory: str, *, prefix: str = "ni_", k_positive: int = 2,
                          validation_fraction: float = 0.1, max_validation_instances: int = 100,
                          max_instances_per_task: int | None = None,
                          vocabulary: seqio.Vocabulary | None = None,
                          cluster_of_categories: Callable[[Sequence[str]], str] = default_cluster,
                          few_shot_token_budget: int | None = None,
                          metric_fns: Sequence[Callable] = NI_METRICS,
                          on_error: OnError = "raise") -> list[str]:
  """Registers every `*.json` NI task in `directory`; returns the per-task mixture names."""
  if on_error not in ("raise", "skip"):
    raise UserError(f"on_error={on_error!r}; use 'raise' or 'skip'.")
  if not 0 <= validation_fraction < 1:
    raise UserError(f"validation_fraction={validation_fraction}; use a value in [0, 1).")
  if max_instances_per_task is not None and max_instances_per_task < 1:
    raise UserError(f"max_instances_per_task={max_instances_per_task}; use None or a positive count.")
  if not tf.io.gfile.isdir(directory):
    raise UserError(f"{directory}: not a directory of Natural Instructions task files.")
  paths = sorted(tf.io.gfile.glob(os.path.join(directory, "*.json")))
  if not paths:
    raise UserError(f"{directory}: no *.json task files (the NI repository keeps them in tasks/).")
  start = time.perf_counter()
  headers: dict[str, NIHeader] = {}
  problems = []
  # Reading headers waits on the disk (a cold 1,600-file clone: 6 s in series), so
  # read them from threads; results keep file order.
  with concurrent.futures.ThreadPoolExecutor(_READER_THREADS) as pool:
    results = list(pool.map(_header_or_error, paths))
  for path, header in zip(paths, results):
    name = prefix + _slug(os.path.basename(path)[:-len(".json")])
    if isinstance(header, UserError):
      if on_error == "raise":
        raise header
      problems.append(str(header))
      continue
    if name in headers:
      raise UserError(f"{path} and {headers[name].path} both become task {name!r}; rename one.")
    headers[name] = header
  if problems:
    logging.warning("Skipped %d of %d NI files in %s that are not NI tasks, e.g. %s",
                    len(problems), len(paths), directory, problems[0])
  registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if taken := sorted(n for n in headers if {n, f"{n}_zs_noopt", f"{n}_fs_noopt"} & registered):
    raise UserError(f"NI task names already registered (e.g. {taken[0]!r}, from "
                    f"{headers[taken[0]].path}); pass another prefix= (now {prefix!r}).")

  vocabulary = vocabulary or default_vocabulary()
  for name, header in headers.items():
    records = NIInstances(header, validation_fraction=validation_fraction,
                          max_validation=max_validation_instances,
                          max_train=max_instances_per_task, on_error=on_error)
    cluster = cluster_of_categories(header.categories)
    few_shot = (_positive_few_shot(header, k_positive, few_shot_token_budget),) \
        if header.positives and k_positive > 0 else ()
    register_flan_task(FlanTaskSpec(
        name=name, cluster=cluster, records=records, templates=ZERO_SHOT_TEMPLATES,
        target_field="outputs", vocabulary=vocabulary, few_shot=False, extra_variants=few_shot,
        metric_fns=tuple(metric_fns)))
  logging.info("Registered %d Natural Instructions tasks from %s in %.2f s.", len(headers),
               directory, time.perf_counter() - start)
  return list(headers)


def _positive_few_shot(header: NIHeader, k: int, budget: int | None) -> PositiveExamplesFewShot:
  """`fs_noopt` for NI: the task's positive examples, not train instances, as exemplars."""
  return PositiveExamplesFewShot(
      "fs_noopt", tuple(Template(prompt, "{output}") for prompt, _ in FEW_SHOT_TEMPLATES),
      k=k, token_budget=budget, example_formats=tuple(e for _, e in FEW_SHOT_TEMPLATES),
      positives=header.positives)

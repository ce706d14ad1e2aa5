"""Decontamination that guards a training run: every training example checked before step 1.

`train.decontaminate_against = ['mmlu_0shot', 'bbh_direct', 'gsm8k']` names eval
tasks and mixtures. Before training, `guard` reads every training task's "train"
split once, rendered exactly as the run renders it (FLAN's tasks render a record the
same way in every epoch for a seed: `flan_task.RenderedSource`), and checks each
example's inputs and targets against the eval index (`decontamination_index`, built
once and cached). The contaminated records are then never read: each affected task
is registered again as `<task>_decontaminated`, a copy whose source skips those
record indices, and the run trains on `<mixture>_decontaminated`, the same mixture
with the same rates over the copies. Tasks that lose nothing are used as they are.

Tasks read through seqio rather than in Python (TFDS, files with their own
preprocessors) cannot skip records by index: their copy gets the n-gram filter as a
preprocessor (`decontamination.NgramFilter`), which drops the same examples as they
stream past; the counts before training come from the same one pass.

Nothing is silent: per task, checked and removed counts and the eval tasks hit go to
the log and to MODEL_DIR/decontamination.json (`Summary.to_dict`), with a few
samples of what was removed. A task that would lose every example is an error.
"""

import collections
import dataclasses
import logging
import time
from typing import Sequence

import seqio

from flan_jax.data import decontamination as dc
from flan_jax.data import decontamination_index as di
from flan_jax.data import example_source, registry, task_reader
from flan_jax.errors import UserError

log = logging.getLogger(__name__)

SPLIT = "train"
SUFFIX = "_decontaminated"
_SAMPLES = 3


@dataclasses.dataclass
class TaskCounts:
  task: str
  checked: int = 0
  removed: int = 0
  eval_tasks_hit: dict[str, int] = dataclasses.field(default_factory=dict)
  samples: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Summary:
  """What `guard` did: written to MODEL_DIR/decontamination.json."""
  against: list[str]  # as the run named them
  eval_tasks: list[str]  # the leaf eval tasks indexed
  rule: str
  mixture: str  # what the run trains on
  tasks: list[TaskCounts]
  index_ngrams: int = 0
  seconds: float = 0.0

  @property
  def checked(self) -> int:
    return sum(t.checked for t in self.tasks)

  @property
  def removed(self) -> int:
    return sum(t.removed for t in self.tasks)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "checked": self.checked, "removed": self.removed}

  def brief(self) -> dict:
    """The few facts the evaluation report carries."""
    return {"against": self.against, "rule": self.rule, "checked": self.checked,
            "removed": self.removed}


def guard(mixture_or_task_name: str, against: Sequence[str], *, rule: str = "13-gram",
          seed: int = 0, cache_dir: str | None = None,
          index: di.DecontaminationIndex | None = None) -> Summary:
  """Checks every training example; returns what the run should train on (`mixture`)."""
  against = [against] if isinstance(against, str) else list(against)
  started = time.perf_counter()
  index = index or di.eval_index(against, rule, cache_dir=cache_dir, seed=seed)
  target = registry.get_mixture_or_task(mixture_or_task_name)
  tasks = [target] if isinstance(target, seqio.Task) else list(target.tasks)
  overlap = set(t.name for t in tasks) & set(index.sources)
  if overlap:
    raise UserError(f"{sorted(overlap)} are both trained on and decontaminated against; "
                    "take them out of the training mixture or out of decontaminate_against.")
  counts, replacement = [], {}
  for task in tasks:
    if SPLIT not in task.splits:
      continue  # the mixture leaves it out of training too (task_reader)
    task_counts, removed = _check_task(task, index, seed)
    counts.append(task_counts)
    log.warning("Decontamination: %s: removed %d of %d training examples%s.", task.name,
                task_counts.removed, task_counts.checked,
                f" (hit {task_counts.eval_tasks_hit})" if task_counts.removed else "")
    if task_counts.removed == task_counts.checked and task_counts.checked:
      raise UserError(f"Decontamination would remove every training example of "
                      f"{task.name!r} (it overlaps {task_counts.eval_tasks_hit}); take it out "
                      "of the mixture, or check for shared template boilerplate.")
    if removed:
      replacement[task.name] = _register_copy(task, removed, index)
  mixture = _register_mixture(target, tasks, replacement) if replacement else target.name
  summary = Summary(against=against, eval_tasks=list(index.sources), rule=index.rule.name,
                    mixture=mixture, tasks=counts, index_ngrams=len(index),
                    seconds=round(time.perf_counter() - started, 2))
  log.warning("Decontamination against %s (%s rule): removed %d of %d training examples "
              "in %d task(s); training on %s.", ", ".join(against), index.rule.name,
              summary.removed, summary.checked, len(replacement), mixture)
  return summary


def _example_text(example: dict) -> str:
  return "\n".join(dc._to_text(example.get(f"{f}_pretokenized", example.get(f, "")))
                   for f in ("inputs", "targets"))


def _check_task(task: seqio.Task, index: di.DecontaminationIndex,
                seed: int) -> tuple[TaskCounts, list[int]]:
  """One pass over the task's training split: (counts, removed record indices)."""
  counts, hits, removed = TaskCounts(task.name), collections.Counter(), []
  if task_reader.python_readable(task):
    count = task.source.count(SPLIT)
    examples = ((i, task_reader.render(task, SPLIT, i, seed, None)) for i in range(count))
  else:
    examples = enumerate(task_reader.task_examples(task, SPLIT, sequence_length=None, seed=seed,
                                                   shuffle=False))
  for record, example in examples:
    if example is None:
      continue
    counts.checked += 1
    hit = index.hit(_example_text(example))
    if hit is None:
      continue
    counts.removed += 1
    removed.append(record)
    hits[hit.source] += 1
    if len(counts.samples) < _SAMPLES:
      counts.samples.append({"record": record, "text": dc._snippet(_example_text(example)),
                             "ngram": hit.ngram, "eval_task": hit.source,
                             "coverage": round(hit.coverage, 3)})
  counts.eval_tasks_hit = dict(hits.most_common())
  return counts, removed


def _register_copy(task: seqio.Task, removed: list[int],
                   index: di.DecontaminationIndex) -> str:
  name = task.name + SUFFIX
  if isinstance(task.source, example_source.IndexedSource) and task_reader.python_readable(task):
    copy = task.replace(name=name, source=task.source.without(SPLIT, removed))
  else:
    preprocessors = list(task.preprocessors)
    position = next((i for i, p in enumerate(preprocessors) if dc._is_tokenizer(p)), None)
    if position is None:
      raise UserError(f"Decontamination cannot filter {task.name!r}: it is read through seqio "
                      "and has no seqio.preprocessors.tokenize step to filter before.")
    preprocessors.insert(position, dc.make_filter(index, name=f"{name} filter"))
    copy = task.replace(name=name, preprocessors=preprocessors)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # a second run in this process: its own counts
  seqio.TaskRegistry.add_provider(name, copy)
  return name


def _register_mixture(target, tasks: list[seqio.Task], replacement: dict[str, str]) -> str:
  """The training mixture over the copies, at the original's rates."""
  name = target.name + SUFFIX
  if isinstance(target, seqio.Task):
    return replacement[target.name]
  rates = [(replacement.get(t.name, t.name), target.get_rate(t)) for t in tasks]
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, rates)
  return name

"""Task clusters and leave-one-cluster-out splits, FLAN's test of zero-shot transfer.

Every registered task belongs to one cluster (NLI, sentiment, QA, ...). To test
generalisation to an unseen kind of task, FLAN trains on every cluster except one
and evaluates on that one, also leaving out clusters that overlap it (e.g. holding
out NLI also removes paraphrase, whose tasks are close to entailment).

A task may also name its dataset and its variant (`zs_opt`, `fs_noopt`, `cot`, ...),
as every `FlanTaskSpec` task does. That settles the two rules the numbers depend on:
- Training weights *datasets*, not variants: a dataset's rate, min(examples, cap),
  is shared among its variants, so a dataset rendered six ways is not drawn six
  times as often as one rendered once.
- The held-out score is FLAN's: each held-out dataset counts once, by its zero-shot
  options variant (rank classification over its options), or its zero-shot variant
  when it has no options. Inverted tasks (write the premise from the answer) are not
  evaluated at all; the other variants are reported beside the score, per variant.
"""

from typing import Callable, Mapping, Sequence

import seqio

_CLUSTER_OF: dict[str, str] = {}
_DATASET_OF: dict[str, str] = {}
_VARIANT_OF: dict[str, str] = {}

# Clusters too close to be trained on when the key is held out (after FLAN 2021, Sec. 2.2).
DEFAULT_OVERLAPS: Mapping[str, Sequence[str]] = {
    "nli": ("paraphrase",),
    "paraphrase": ("nli",),
    "closed_book_qa": ("reading_comprehension", "extractive_qa", "multiple_choice_qa"),
    "reading_comprehension": ("closed_book_qa", "extractive_qa"),
    "extractive_qa": ("reading_comprehension", "closed_book_qa"),
    "multiple_choice_qa": ("closed_book_qa",),
}
# Variants whose answers cannot be scored against the dataset's labels.
NOT_EVALUATED_VARIANTS = ("inverted",)
# FLAN's zero-shot held-out score, in order of preference per dataset.
HEADLINE_VARIANTS = ("zs_opt", "zs_noopt")


def assign(task_name: str, cluster: str, *, dataset: str | None = None,
           variant: str | None = None) -> None:
  _CLUSTER_OF[task_name] = cluster
  if dataset is not None:
    _DATASET_OF[task_name] = dataset
  if variant is not None:
    _VARIANT_OF[task_name] = variant


def cluster_of(task_name: str) -> str | None:
  return _CLUSTER_OF.get(task_name)


def dataset_of(task_name: str) -> str:
  """The dataset a variant task renders; a task without one is its own dataset."""
  return _DATASET_OF.get(task_name, task_name)


def variant_of(task_name: str) -> str | None:
  return _VARIANT_OF.get(task_name)


def tasks_by_cluster(task_names: Sequence[str] | None = None) -> dict[str, list[str]]:
  """Cluster -> its registered seqio tasks (mixtures are not listed)."""
  registered = set(seqio.TaskRegistry.names())
  names = [n for n in (task_names or _CLUSTER_OF) if n in registered]
  grouped: dict[str, list[str]] = {}
  for name in sorted(names):
    grouped.setdefault(_CLUSTER_OF[name], []).append(name)
  return grouped


def dataset_shared_rates(task_names: Sequence[str], cap: int | None,
                         split: str = "train") -> list[tuple[str, Callable]]:
  """(task, rate) pairs: each dataset weighs min(examples, cap), shared among its variants.

  Rates are functions, evaluated when seqio first needs them, so registering reads no data.
  """
  variants_per_dataset: dict[str, int] = {}
  for name in task_names:
    variants_per_dataset[dataset_of(name)] = variants_per_dataset.get(dataset_of(name), 0) + 1

  def rate(task: seqio.Task) -> float:
    examples = task.num_input_examples(split) or 0
    share = 1.0 / variants_per_dataset[dataset_of(task.name)]
    return share * (examples if cap is None else min(examples, cap))

  return [(name, rate) for name in task_names]


def is_evaluated(task_name: str) -> bool:
  return variant_of(task_name) not in NOT_EVALUATED_VARIANTS


def cluster_groups(task_names: Sequence[str]) -> dict[str, list[str]]:
  """"cluster_<name>" -> the tasks of that cluster, in order (tasks without one left out)."""
  groups: dict[str, list[str]] = {}
  for task in task_names:
    cluster = cluster_of(task)
    if cluster:
      groups.setdefault(f"cluster_{cluster}", []).append(task)
  return groups


def headline_tasks(task_names: Sequence[str]) -> list[str]:
  """Per dataset, the task FLAN's zero-shot score counts: `zs_opt`, else `zs_noopt`.

  Tasks that name no variant (plain seqio tasks) are their own dataset and count.
  """
  by_dataset: dict[str, dict[str | None, str]] = {}
  for name in task_names:
    by_dataset.setdefault(dataset_of(name), {})[variant_of(name)] = name
  chosen = []
  for variants in by_dataset.values():
    if None in variants:
      chosen.append(variants[None])
      continue
    preferred = [variants[v] for v in HEADLINE_VARIANTS if v in variants]
    if preferred:
      chosen.append(preferred[0])
  return sorted(chosen)


def variant_groups(task_names: Sequence[str]) -> dict[str, list[str]]:
  """Variant name -> the tasks of that variant, for the per-variant breakdown."""
  groups: dict[str, list[str]] = {}
  for name in task_names:
    variant = variant_of(name)
    if variant is not None:
      groups.setdefault(variant, []).append(name)
  return groups


def register_leave_one_out(held_out: str, *, prefix: str = "loo", among: Sequence[str] | None = None,
                           overlaps: Mapping[str, Sequence[str]] = DEFAULT_OVERLAPS,
                           cap: int | None = 3_000, eval_filter=is_evaluated,
                           train_name: str | None = None, eval_name: str | None = None
                           ) -> tuple[str, str]:
  """Registers `<prefix>_<held_out>_train` and `<prefix>_<held_out>_eval`; returns their names.

  The training mixture takes every cluster except `held_out` and its overlaps, each
  dataset weighted by min(examples, cap) shared among its variants; the evaluation
  mixture holds the held-out cluster's tasks that pass `eval_filter` (by default all
  but inverted ones). `among` limits both to those task names (default: every
  clustered task).
  """
  grouped = tasks_by_cluster(among)
  if held_out not in grouped:
    raise ValueError(f"No tasks in cluster {held_out!r}; clusters: {sorted(grouped)}.")
  excluded = {held_out, *overlaps.get(held_out, ())}
  train = [t for c, names in grouped.items() if c not in excluded for t in names]
  evaluate = [t for t in grouped[held_out] if eval_filter is None or eval_filter(t)]
  train_name = train_name or f"{prefix}_{held_out}_train"
  eval_name = eval_name or f"{prefix}_{held_out}_eval"
  for name, tasks in ((train_name, train), (eval_name, evaluate)):
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, dataset_shared_rates(tasks, cap))
  return train_name, eval_name

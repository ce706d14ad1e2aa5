"""Task clusters and leave-one-cluster-out splits, FLAN's test of zero-shot transfer.

Every registered task belongs to one cluster (NLI, sentiment, QA, ...). To test
generalisation to an unseen kind of task, FLAN trains on every cluster except one
and evaluates on that one, also leaving out clusters that overlap it (e.g. holding
out NLI also removes paraphrase, whose tasks are close to entailment).
"""

from typing import Mapping, Sequence

import seqio

from flan_jax.data.mixtures import examples_proportional

_CLUSTER_OF: dict[str, str] = {}

# Clusters too close to be trained on when the key is held out (after FLAN 2021, Sec. 2.2).
DEFAULT_OVERLAPS: Mapping[str, Sequence[str]] = {
    "nli": ("paraphrase",),
    "paraphrase": ("nli",),
    "closed_book_qa": ("reading_comprehension", "extractive_qa", "multiple_choice_qa"),
    "reading_comprehension": ("closed_book_qa", "extractive_qa"),
    "extractive_qa": ("reading_comprehension", "closed_book_qa"),
    "multiple_choice_qa": ("closed_book_qa",),
}


def assign(task_name: str, cluster: str) -> None:
  _CLUSTER_OF[task_name] = cluster


def cluster_of(task_name: str) -> str | None:
  return _CLUSTER_OF.get(task_name)


def tasks_by_cluster(task_names: Sequence[str] | None = None) -> dict[str, list[str]]:
  """Cluster -> its registered seqio tasks (mixtures are not listed)."""
  registered = set(seqio.TaskRegistry.names())
  names = [n for n in (task_names or _CLUSTER_OF) if n in registered]
  grouped: dict[str, list[str]] = {}
  for name in sorted(names):
    grouped.setdefault(_CLUSTER_OF[name], []).append(name)
  return grouped


def register_leave_one_out(held_out: str, *, prefix: str = "loo", among: Sequence[str] | None = None,
                           overlaps: Mapping[str, Sequence[str]] = DEFAULT_OVERLAPS,
                           cap: int = 3_000, eval_filter=None) -> tuple[str, str]:
  """Registers `<prefix>_<held_out>_train` and `<prefix>_<held_out>_eval`; returns their names.

  The training mixture takes every cluster except `held_out` and its overlaps; the
  evaluation mixture holds the held-out cluster's tasks (those passing `eval_filter`).
  `among` limits both to those task names (default: every clustered task).
  """
  grouped = tasks_by_cluster(among)
  if held_out not in grouped:
    raise ValueError(f"No tasks in cluster {held_out!r}; clusters: {sorted(grouped)}.")
  excluded = {held_out, *overlaps.get(held_out, ())}
  train = [t for c, names in grouped.items() if c not in excluded for t in names]
  evaluate = [t for t in grouped[held_out] if eval_filter is None or eval_filter(t)]
  train_name, eval_name = f"{prefix}_{held_out}_train", f"{prefix}_{held_out}_eval"
  for name, tasks in ((train_name, train), (eval_name, evaluate)):
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks, default_rate=examples_proportional(cap=cap))
  return train_name, eval_name

"""Registration helpers shared by the library's modules."""

from typing import Mapping, Sequence

import seqio

from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task, variants_of
from flan_jax.errors import UserError

VALIDATION_EVERY = 20


def every_nth_split(records: Sequence, split: str, every: int = VALIDATION_EVERY) -> list:
  """Every `every`-th record is validation (the last one if there are fewer); the rest train."""
  held = set(range(every - 1, len(records), every)) or ({len(records) - 1} if records else set())
  if split == "validation":
    return [r for i, r in enumerate(records) if i in held]
  return [r for i, r in enumerate(records) if i not in held]


def _registered(mixture: str, tasks: Sequence[str]) -> bool:
  """Whether `mixture` is registered over exactly `tasks`; over other tasks is an error."""
  if mixture not in seqio.MixtureRegistry.names():
    return False
  found = sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)
  if found != sorted(tasks):
    raise UserError(f"Mixture {mixture!r} is already registered over other tasks ({found[:3]}...): "
                    "two library modules use one name; rename one of the datasets.")
  return True


def register_once(spec: FlanTaskSpec) -> str:
  """register_flan_task, skipped when this spec is registered already; returns its mixture.

  Tests and the library may register twice in one process. The check compares task
  names, so another module's mixture of the same name fails loudly instead.
  """
  if not _registered(spec.name, [f"{spec.name}_{v.name}" for v in variants_of(spec)]):
    register_flan_task(spec)
  return spec.name


def add_mixture_once(mixture: str, tasks: Sequence[str]) -> str:
  """A collection mixture (equal rates: these collect evaluation tasks), registered once."""
  if not _registered(mixture, tasks):
    seqio.MixtureRegistry.add(mixture, list(tasks), default_rate=1.0)
  return mixture


def size_weighted_mean(results: Mapping[str, float], weights: Mapping[str, int], what: str) -> float:
  """The mean of `results[key]` over `weights`' keys, each weighted by its example count.

  lm-eval's group scores (MMLU, BBH) weight each task by its size; ours are plain means.
  """
  if not weights:
    raise KeyError(f"No results to average: evaluate every {what} first.")
  total = weight = 0.0
  for key, count in weights.items():
    if key not in results:
      raise KeyError(f"No result {key!r}: evaluate every {what} first.")
    total, weight = total + results[key] * count, weight + count
  return total / weight

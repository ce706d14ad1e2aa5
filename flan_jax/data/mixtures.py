"""Mixing rates: FLAN's examples-proportional rule with a per-task cap, and temperature.

A task's rate is min(num_train_examples, cap) ** (1 / temperature) (times `scale`),
so big tasks cannot drown small ones (the cap, FLAN used 3,000 to 30,000) and a
temperature above 1 flattens what is left. seqio normalises the rates of a mixture.
"""

import functools
from typing import Mapping

import seqio


def examples_proportional(cap: int | None = None, temperature: float = 1.0, scale: float = 1.0):
  """A seqio rate function: rate = min(examples, cap) ** (1 / temperature) * scale."""
  return functools.partial(
      seqio.mixing_rate_num_examples, maximum=cap, temperature=temperature, scale=scale)


def normalized_rates(mixture: seqio.Mixture) -> dict[str, float]:
  """Each leaf task's share of the mixture's examples (sums to 1)."""
  total = mixture.total_rate
  return {task.name: mixture.get_rate(task) / total for task in mixture.tasks}


def register_weighted_mixture(name: str, parts: Mapping[str, float]) -> None:
  """A mixture of mixtures (or tasks) with fixed weights, like Flan 2022's flan/t0/niv2/cot.

  seqio gives each part `weight` of the draws and splits it among the part's own
  tasks by their rates, so a submixture keeps its internal balance.
  """
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(part, float(w)) for part, w in parts.items()])

"""Metric functions in seqio's form: (targets, predictions) -> {name: value}."""

from typing import Sequence


def accuracy(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match in percent, after the task's postprocessor.

  A target may be a list of acceptable answers (several references): any one counts.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  hits = sum(p in t if isinstance(t, (list, tuple)) else p == t
             for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def strip(text: str, example=None, is_target: bool = False) -> str:
  """A postprocessor: surrounding whitespace never decides correctness."""
  del example, is_target
  return text.strip()

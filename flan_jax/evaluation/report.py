"""The tables printed at the end of a run (before/after) and of an evaluation."""

from typing import Mapping, Sequence

import rich.console
import rich.table


def print_comparison(before: Mapping[str, float], after: Mapping[str, float],
                     groups: Mapping[str, Sequence[str]]) -> None:
  group_of = {task: group for group, tasks in groups.items() for task in tasks}
  table = rich.table.Table(title="Evaluation before and after finetuning")
  for column in ("group", "task", "metric", "before", "after", "change"):
    table.add_column(column, justify="right" if column in ("before", "after", "change") else "left")
  keys = sorted(set(before) | set(after),
                key=lambda k: ("_mean/" in k, group_of.get(k.rsplit("/", 1)[0], ""), k))
  for key in keys:
    task, metric = key.rsplit("/", 1)
    group = task.removesuffix("_mean") if task.endswith("_mean") else group_of.get(task, "")
    old, new = before.get(key), after.get(key)
    change = f"{new - old:+.1f}" if old is not None and new is not None else ""
    fmt = lambda v: "" if v is None else f"{v:.1f}"
    table.add_row(group, task, metric, fmt(old), fmt(new), change,
                  end_section="_mean/" not in key and keys.index(key) + 1 < len(keys)
                  and "_mean/" in keys[keys.index(key) + 1])
  rich.console.Console().print(table)


def print_results(results: Mapping[str, float], groups: Mapping[str, Sequence[str]],
                  title: str) -> None:
  """One evaluation's results: per task, then the group means."""
  group_of = {task: group for group, tasks in groups.items() for task in tasks}
  table = rich.table.Table(title=title)
  for column in ("group", "task", "metric", "value"):
    table.add_column(column, justify="right" if column == "value" else "left")
  keys = sorted(results, key=lambda k: ("_mean/" in k, group_of.get(k.rsplit("/", 1)[0], ""), k))
  for key in keys:
    task, metric = key.rsplit("/", 1)
    group = task.removesuffix("_mean") if task.endswith("_mean") else group_of.get(task, "")
    table.add_row(group, task, metric, f"{results[key]:.1f}")
  rich.console.Console().print(table)

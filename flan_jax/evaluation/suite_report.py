"""The suite's summary: the averages the papers report, its table and its bar chart.

- `average`: the plain mean of the benchmarks' headline scores, as Tulu (Wang et al.,
  2023, "How Far Can Camels Go?") averages its table's columns.
- `normalized_average`: FLAN-T5's (Chung et al., 2022, "Scaling Instruction-Finetuned
  Language Models"): the macro-average of normalized scores, following BIG-Bench's
  "normalized preferred metric": 100 * (score - random) / (100 - random), where random is
  what guessing scores (25 on 4-choice MMLU, 1/options per BBH question, 0 for generated
  answers). FLAN-T5 averages six: MMLU-Direct, MMLU-CoT, BBH-Direct, BBH-CoT,
  TyDiQA-Direct and MGSM-CoT; here it covers those of them that ran, and the report
  names them (MMLU-CoT is not offered, see docs/evaluation_suite.md).

A row is one checkpoint, one column per benchmark, then both averages: the layout of
the papers' tables.
"""

from typing import Mapping, Sequence

import rich.console
import rich.table


def normalized_score(score: float, random: float) -> float:
  """BIG-Bench's normalized score: 0 at random guessing, 100 at a perfect score."""
  if random >= 100:
    raise ValueError(f"a random-guess score of {random} leaves nothing to normalize")
  return 100.0 * (score - random) / (100.0 - random)


def average(scores: Sequence[float]) -> float | None:
  return sum(scores) / len(scores) if scores else None


def normalized_average(scores: Mapping[str, tuple[float, float]]) -> float | None:
  """The mean of `normalized_score` over {member: (score, random-guess score)}."""
  return average([normalized_score(score, random) for score, random in scores.values()])


def print_suite_table(title: str, row_name: str, columns: Sequence[tuple[str, float | None]],
                      skipped: Sequence[str] = ()) -> None:
  """One row: the checkpoint, then (column title, value) per benchmark and average;
  a skipped benchmark shows "-"."""
  table = rich.table.Table(title=title)
  table.add_column("model", no_wrap=True)
  for name, _ in columns:
    table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
  table.add_row(row_name, *("-" if value is None else f"{value:.1f}" for _, value in columns))
  # Wide enough for every column title in full, also where the output is no terminal
  # (a log file, where rich would assume 80 columns).
  needed = len(row_name) + sum(len(name) + 3 for name, _ in columns) + 4
  console = rich.console.Console()
  console = rich.console.Console(width=max(console.width, needed))
  console.print(table)
  for line in skipped:
    console.print(line, highlight=False)


def plot_suite(columns: Sequence[tuple[str, float]], title: str, path: str) -> None:
  """A bar per benchmark and per average."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [name for name, _ in columns]
  fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 3.5))
  bars = ax.bar(names, [value for _, value in columns])
  ax.bar_label(bars, fmt="%.1f", fontsize=8)
  ax.set_ylabel("score (%)")
  ax.set_title(title, fontsize=9)
  plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

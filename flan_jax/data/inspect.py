"""Look at tasks and mixtures as the model sees them (`python -m flan_jax.inspect_data`).

For a task or mixture, `inspect` prints rendered examples with the loss mask visible
(target tokens, the only ones trained on, between ⟦ ⟧; a conversation shows each
assistant turn's trained tokens, its words and end-of-turn EOS), per-task example
counts and effective rates, token-length statistics, how many examples the feature
lengths would truncate, and the packing efficiency; it writes a PNG of the
mixture's proportions. What to inspect must be registered first: the command line
registers the task library and conversation files, a script its own tasks.
"""

import dataclasses
import itertools
import sys

import numpy as np
import seqio

from flan_jax.data import (chat_examples, mixtures, packing, pipeline, registry, task_reader,
                           truncation)


@dataclasses.dataclass
class LengthStats:
  inputs: list[int] = dataclasses.field(default_factory=list)
  targets: list[int] = dataclasses.field(default_factory=list)

  def truncated(self, inputs_length: int, targets_length: int) -> tuple[int, int]:
    return (sum(n > inputs_length for n in self.inputs),
            sum(n > targets_length for n in self.targets))


def show_with_loss_mask(vocabulary: seqio.Vocabulary, row: dict[str, np.ndarray]) -> str:
  """One unpacked prefix-LM row as text, with the trained-on tokens inside ⟦ ⟧."""
  tokens, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
  pieces, current, masked = [], [], bool(weights[0])
  for token, weight in zip(tokens.tolist(), weights.tolist()):
    if token == 0:
      break
    if bool(weight) != masked:
      pieces.append((masked, current))
      current, masked = [], bool(weight)
    current.append(token)
  pieces.append((masked, current))
  def render(ids: list[int]) -> str:  # EOS shown where it stands (conversations hold several)
    texts, current = [], []
    for token in ids:
      if token == vocabulary.eos_id:
        texts.append(vocabulary.decode(current))
        current = []
      else:
        current.append(token)
    return "<eos>".join([*texts, vocabulary.decode(current)])

  return "".join(f"⟦{render(ids)}⟧" if trained else render(ids) for trained, ids in pieces)


def task_lengths(task: seqio.Task, split: str, sample_size: int,
                 lengths: dict[str, int] | None = None) -> LengthStats:
  """Token lengths of the task's first examples, read as a run with `lengths` reads them
  (few-shot prompts keep the exemplars that fit, as in training)."""
  stats = LengthStats()
  examples = task_reader.task_examples(task, split, sequence_length=lengths, seed=0,
                                       shuffle=False)
  for example in itertools.islice(examples, sample_size):
    stats.inputs.append(len(example["inputs"]))
    stats.targets.append(len(example["targets"]))
  return stats


def packing_efficiency(name: str, lengths: dict[str, int], rows: int = 64) -> float:
  """Share of non-padding tokens in packed rows of this task or mixture."""
  batches = pipeline.train_batches(name, lengths, rows, seed=0)
  batch = next(batches)
  return float(np.count_nonzero(batch["decoder_segment_ids"]) / batch["decoder_segment_ids"].size)


def _percentiles(values: list[int]) -> str:
  if not values:
    return "n/a"
  p50, p95 = np.percentile(values, [50, 95])
  return f"mean {np.mean(values):.0f}, p50 {p50:.0f}, p95 {p95:.0f}, max {max(values)}"


def plot_rates(rates: dict[str, float], title: str, path: str, top: int = 40) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ranked = sorted(rates.items(), key=lambda kv: -kv[1])
  shown = ranked[:top]
  if len(ranked) > top:
    shown.append((f"({len(ranked) - top} others)", sum(r for _, r in ranked[top:])))
  fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.2))
  ax.barh([n for n, _ in shown][::-1], [100 * r for _, r in shown][::-1])
  ax.set_xlabel("share of training examples (%)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def inspect(name: str, *, split: str = "train", num_examples: int = 2, sample_size: int = 200,
            lengths: dict[str, int] | None = None, plot_path: str | None = None,
            out=sys.stdout) -> dict:
  """Prints the report for a task or mixture; returns its numbers (for tests and scripts)."""
  target = registry.get_mixture_or_task(name)
  tasks = registry.leaf_tasks(name)
  rates = mixtures.normalized_rates(target) if isinstance(target, seqio.Mixture) else {name: 1.0}
  lengths = lengths or {"inputs": 512, "targets": 128}
  vocabulary = tasks[0].output_features["targets"].vocabulary
  print(f"# {name}: {'mixture' if isinstance(target, seqio.Mixture) else 'task'} of "
        f"{len(tasks)} task(s), split {split!r}\n", file=out)

  print("## Examples as the model sees them (trained-on tokens in ⟦ ⟧)\n", file=out)
  shown_from = tasks[:num_examples]
  for task in shown_from:
    example = next(task_reader.task_examples(task, split, sequence_length=lengths, seed=0,
                                             shuffle=False), None)
    if example is None:  # conversations, each with a last exchange longer than the row
      print(f"[{task.name}]\n(no example fits a row of {sum(lengths.values())} tokens: each "
            "conversation's last exchange alone is longer)\n", file=out)
      continue
    if "targets_weights" in example:  # conversations, text: their own loss weights, one row
      row = next(packing.pack([example], lengths, max_examples_per_row=1))
    else:
      inputs, _ = truncation.fit_inputs(example["inputs"], lengths["inputs"],
                                        eos_id=vocabulary.eos_id)
      targets, _ = truncation.fit_targets(example["targets"], lengths["targets"])
      row = packing.row_features(inputs, targets, lengths)
    print(f"[{task.name}]\n{show_with_loss_mask(vocabulary, row)}\n", file=out)

  print("## Tasks: examples, rate, lengths (tokens), truncated at "
        f"inputs={lengths['inputs']}/targets={lengths['targets']}\n", file=out)
  report = {"tasks": {}, "rates": rates}
  for task in tasks:
    count = task.num_input_examples(split)
    stats = task_lengths(task, split, sample_size, lengths)
    cut_inputs, cut_targets = stats.truncated(lengths["inputs"], lengths["targets"])
    if isinstance(task.source, chat_examples.ChatSource):  # fitted to the whole row
      cut_targets = sum(n > lengths["inputs"] + lengths["targets"] for n in stats.targets)
    report["tasks"][task.name] = {"examples": count, "rate": rates.get(task.name, 0.0),
                                  "sampled": len(stats.inputs), "truncated_inputs": cut_inputs,
                                  "truncated_targets": cut_targets}
    print(f"{task.name}: {count} examples, rate {100 * rates.get(task.name, 0):.2f}%\n"
          f"    inputs  {_percentiles(stats.inputs)}\n    targets {_percentiles(stats.targets)}\n"
          f"    truncated in sample of {len(stats.inputs)}: {cut_inputs} inputs, "
          f"{cut_targets} targets", file=out)

  if split == "train":
    efficiency = packing_efficiency(name, lengths)
    report["packing_efficiency"] = efficiency
    print(f"\n## Packing: {100 * efficiency:.1f}% of tokens are not padding at length "
          f"{lengths['inputs'] + lengths['targets']}", file=out)
  path = plot_path or f"{name}_rates.png"
  plot_rates(rates, f"{name}: mixing proportions", path)
  report["plot"] = path
  print(f"\nWrote the proportions plot to {path}", file=out)
  return report


if __name__ == "__main__":  # the command line moved up, beside the task library it registers
  sys.exit("The command is `python -m flan_jax.inspect_data` now (same flags).")

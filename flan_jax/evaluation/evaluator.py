"""Evaluation by generation on seqio tasks: prompt, decode, postprocess, score.

Each task's own postprocessor and predict metric functions decide the score, as in
seqio, so a task registered once is trained on and evaluated the same way. Prompts
longer than the prompt buffer keep their last tokens (where the question usually
is); how many were cut is counted and reported, never silent.
"""

import dataclasses
import logging
from typing import Mapping, Sequence

import numpy as np
import seqio

from flan_jax.evaluation.decoding import GenerateFn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  split: str = "validation"
  max_examples_per_task: int | None = 100
  batch_size: int = 64
  # The training tasks' validation splits too; a large library has hundreds of them.
  evaluate_seen: bool = True


def eval_split(task: seqio.Task, split: str) -> str | None:
  """`split`, or "test" for evaluation-only tasks (MMLU, BBH, GSM8K) that have no other."""
  if split in task.splits:
    return split
  return "test" if split == "validation" and "test" in task.splits else None


def left_pad_prompts(token_lists: Sequence[Sequence[int]], length: int,
                     prefix: Sequence[int] = (0,)):
  """prefix + inputs per row, left-padded to `length`: (prompts, mask, number truncated).

  The prefix is the decoder-only model's BOS (seqio's 0 by default), nothing for T5.
  """
  prompts = np.zeros((len(token_lists), length), np.int32)
  mask = np.zeros((len(token_lists), length), np.int32)
  truncated = 0
  for row, tokens in enumerate(token_lists):
    tokens = [*prefix, *tokens]
    if len(tokens) > length:
      tokens, truncated = tokens[-length:], truncated + 1
    prompts[row, length - len(tokens):] = tokens
    mask[row, length - len(tokens):] = 1
  return prompts, mask, truncated


def _decode(vocabulary: seqio.Vocabulary, ids: np.ndarray) -> str:
  ids = ids.tolist()
  if vocabulary.eos_id in ids:
    ids = ids[:ids.index(vocabulary.eos_id)]
  return vocabulary.decode(ids)


def evaluate_task(task: seqio.Task, generate: GenerateFn, prompt_length: int,
                  config: EvalConfig, prompt_prefix: Sequence[int] = (0,)
                  ) -> tuple[dict[str, float], int]:
  """The task's metrics on its `config.split`, and how many prompts were truncated."""
  dataset = task.get_dataset(sequence_length=None, split=eval_split(task, config.split),
                             shuffle=False, num_epochs=1, use_cached=False)
  if config.max_examples_per_task:
    dataset = dataset.take(config.max_examples_per_task)
  examples = list(dataset.as_numpy_iterator())
  vocabulary = task.output_features["targets"].vocabulary
  postprocess = task.postprocess_fn or (lambda text, **_: text)
  predictions, truncated = [], 0
  for start in range(0, len(examples), config.batch_size):
    chunk = examples[start:start + config.batch_size]
    prompts, mask, cut = left_pad_prompts([ex["inputs"] for ex in chunk], prompt_length,
                                          prompt_prefix)
    truncated += cut
    # Full-size batches only (repeating the last row), so generate compiles once.
    fill = ((0, config.batch_size - len(chunk)), (0, 0))
    generated = generate(np.pad(prompts, fill, mode="edge"), np.pad(mask, fill, mode="edge"))
    for example, ids in zip(chunk, generated):
      predictions.append(postprocess(_decode(vocabulary, ids), example=example, is_target=False))
  targets = [postprocess(ex["targets_pretokenized"].decode("utf-8"), example=ex, is_target=True)
             for ex in examples]
  metrics = {}
  for metric_fn in task.predict_metric_fns:
    metrics.update(metric_fn(targets, predictions))
  if truncated:
    log.warning("%s: %d of %d prompts were longer than %d tokens and kept only their end.",
                task.name, truncated, len(examples), prompt_length)
  return metrics, truncated


def evaluate(tasks: Sequence[seqio.Task], generate: GenerateFn, prompt_length: int,
             config: EvalConfig, prompt_prefix: Sequence[int] = (0,)) -> dict[str, float]:
  """{"task/metric": value} over `tasks`."""
  results = {}
  for task in tasks:
    metrics, _ = evaluate_task(task, generate, prompt_length, config, prompt_prefix)
    results.update({f"{task.name}/{name}": float(value) for name, value in metrics.items()})
  return results


def group_means(results: Mapping[str, float], groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
  """Mean of each metric over each group's tasks, keyed "<group>_mean/<metric>"."""
  means = {}
  for group, task_names in groups.items():
    by_metric: dict[str, list[float]] = {}
    for key, value in results.items():
      task_name, metric = key.rsplit("/", 1)
      if task_name in task_names:
        by_metric.setdefault(metric, []).append(value)
    means.update({f"{group}_mean/{m}": float(np.mean(v)) for m, v in by_metric.items()})
  return means

"""Training batches: a seqio task or mixture, packed, per host, as numpy.

For a decoder-only model each example's inputs and targets become one decoder
sequence (seqio's prefix-LM features); for an encoder-decoder one the inputs go to
the encoder and the targets to the decoder (seqio's encoder-decoder features).
Several examples share a row with `segment_ids` and restarting `positions`, so the
model can keep packed examples from attending to one another. Loss weights are 1
on target tokens only. Packing is best-fit (`packing.py`); unpacked batches put one example in each
row, with the features seqio's PrefixLMFeatureConverter or EncDecFeatureConverter
would give it.

Examples come from `task_reader` (FLAN tasks rendered in Python, mixed at the
mixture's rates). Every host builds the same global batches and keeps its own slice of
rows, so a step trains on the same data whatever the number of hosts. The stream's `state()` is saved with each
checkpoint; resuming restores it, so a resumed run sees exactly the data a straight run
would without rendering, tokenizing and packing the batches it already trained on.
"""

import itertools
import os
from typing import Any, Mapping

from absl import logging
import numpy as np
import seqio

from flan_jax.data import packing, registry, task_reader, truncation
from flan_jax.data import workers as workers_lib
from flan_jax.errors import UserError

Batch = dict[str, np.ndarray]
# Conversations too long to train on, drawn one after another: past this many, the data
# cannot fill a batch (rather than loop forever).
_MOST_DROPPED_IN_A_ROW = 1000


def feature_converter(pack: bool, encoder_decoder: bool = False) -> seqio.FeatureConverter:
  """seqio's own converter: the reference our rows match, and `inspect`'s view of one example."""
  if encoder_decoder:
    return seqio.EncDecFeatureConverter(pack=pack)
  return seqio.PrefixLMFeatureConverter(pack=pack)


def train_batches(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    global_batch_size: int,
    *,
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
    skip_batches: int = 0,
    pack: bool = True,
    encoder_decoder: bool = False,
    bos_id: int = 0,
    inputs_eos: bool = True,
    state: Mapping[str, Any] | None = None,
    workers: int = 0,
) -> "TrainStream":
  """An endless iterator of this host's part of each global batch.

  `bos_id` starts every decoder sequence (seqio uses 0; see `packing`); `inputs_eos`
  keeps seqio's EOS at the end of the inputs (see `truncation`). Unpacked batches
  hold one example per row, laid out by the same packer. `state` (what the stream's
  `state()` returned) restarts it where it stood, at about the cost of starting;
  without it, `skip_batches` replays that many batches. `workers` processes render
  and tokenize examples (`workers.py`); the batches are the same for any number.
  """
  mixture_or_task = registry.get_mixture_or_task(mixture_or_task_name)  # clear unknown-name error
  if global_batch_size % num_shards:
    raise UserError(
        f"BATCH_SIZE={global_batch_size} must be divisible by the number of hosts ({num_shards}).")
  # Every host builds the same global batches and keeps its own rows of each, so a step
  # trains on the same data whatever the number of hosts (and a 2-host run repeats a
  # 1-host one). The price: each host renders and packs every row.
  # Untrimmed: the packer fits each example by the rule evaluation uses, and counts cuts.
  examples = task_reader.mixture_examples(
      mixture_or_task, "train", sequence_length=task_feature_lengths, seed=seed,
      state=state["examples"] if state else None)
  if workers:
    examples = workers_lib.ParallelExamples(examples, workers)
  eos_id = mixture_or_task.output_features["targets"].vocabulary.eos_id
  packer = packing.BestFitPacker(task_feature_lengths, name=mixture_or_task_name,
                                 encoder_decoder=encoder_decoder, bos_id=bos_id, eos_id=eos_id,
                                 inputs_eos=inputs_eos, max_examples_per_row=None if pack else 1)
  stream = TrainStream(examples, packer, global_batch_size, state,
                       host_rows=(shard_index, num_shards))
  if not state:
    for _ in range(skip_batches):
      next(stream)
  return stream


class TrainStream:
  """Batches of packed rows, with `state()`: the examples' position, the packer's open
  rows and the rows made but not yet batched (all JSON-able)."""

  def __init__(self, examples: "task_reader.MixtureStream | workers_lib.ParallelExamples",
               packer: packing.BestFitPacker, rows_per_batch: int,
               state: Mapping[str, Any] | None = None, host_rows: tuple[int, int] = (0, 1)):
    self._examples, self._packer, self._rows_per_batch = examples, packer, rows_per_batch
    index, count = host_rows  # this host keeps the index-th of `count` equal slices
    per_host = rows_per_batch // count
    self._keep = slice(index * per_host, (index + 1) * per_host)
    self._ready: list[Batch] = []
    if state:
      packer.restore(state["packer"])
      self._ready = [{k: np.asarray(v, np.int32) for k, v in row.items()}
                     for row in state["ready"]]

  def __iter__(self) -> "TrainStream":
    return self

  def __next__(self) -> Batch:
    dropped_in_a_row = 0
    while len(self._ready) < self._rows_per_batch:
      example = next(self._examples)
      if example is None:  # a conversation with nothing left to train: counted, not trained
        self._packer.drop()
        dropped_in_a_row += 1
        if dropped_in_a_row == _MOST_DROPPED_IN_A_ROW:
          raise UserError(
              f"The last {dropped_in_a_row} examples drawn were all conversations whose last "
              f"exchange alone is longer than a row ({self._packer.length} tokens), so nothing "
              "is left to train. Raise TASK_FEATURE_LENGTHS or shorten the conversations.")
        continue
      dropped_in_a_row = 0
      self._ready.extend(self._packer.add(example))
    rows, self._ready = self._ready[:self._rows_per_batch], self._ready[self._rows_per_batch:]
    rows = rows[self._keep]
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  def close(self) -> None:
    """Stops the data workers, if any (the stream cannot be read after)."""
    if hasattr(self._examples, "close"):
      self._examples.close()

  def state(self) -> dict[str, Any]:
    return {"examples": self._examples.state(), "packer": self._packer.state(),
            "ready": [{k: v.tolist() for k, v in row.items()} for row in self._ready]}


def default_workers(backend: str) -> int:
  """Data workers when a run does not say: on an accelerator, one per core the host
  can spare (up to 8); on the CPU none, since its cores run the model."""
  if backend == "cpu":
    return 0
  return min(8, max(len(os.sched_getaffinity(0)) - 2, 0))


def report_truncation(tasks, task_feature_lengths: Mapping[str, int], *, inputs_eos: bool = True,
                      examples_per_task: int = 100, seed: int = 0, split: str = "train"
                      ) -> dict[str, truncation.TruncationCounts]:
  """Counts, per task, how many of its first examples the run's lengths cut; warns once.

  The packer counts cuts over the whole mixed stream, where tasks are no longer
  told apart; this sample says which tasks lose what, before any step is taken.
  """
  counts = {}
  for task in tasks:
    if split not in task.splits:  # evaluation-only tasks, which training leaves out too
      continue
    eos_id = task.output_features["targets"].vocabulary.eos_id
    examples = task_reader.task_examples(task, split, sequence_length=task_feature_lengths,
                                         seed=seed, shuffle=False)
    task_counts = truncation.TruncationCounts()
    for example in itertools.islice(examples, examples_per_task):
      if "targets_weights" in example:  # conversations, text: fitted to the row; the packer counts
        continue
      _, inputs_cut = truncation.fit_inputs(example["inputs"], task_feature_lengths["inputs"],
                                            eos_id=eos_id, inputs_eos=inputs_eos)
      _, targets_cut = truncation.fit_targets(example["targets"], task_feature_lengths["targets"])
      task_counts.add(inputs_cut, targets_cut)
    counts[task.name] = task_counts
  cut = {name: c for name, c in counts.items() if c.inputs_cut or c.targets_cut}
  if cut:
    lines = "\n".join(f"  {name}: {c}" for name, c in sorted(cut.items()))
    logging.warning("%d of %d tasks have examples longer than TASK_FEATURE_LENGTHS=%s "
                    "(first %d examples of each):\n%s", len(cut), len(counts),
                    dict(task_feature_lengths), examples_per_task, lines)
  return counts

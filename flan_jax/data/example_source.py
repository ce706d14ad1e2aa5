"""Sources whose examples are made in Python, token ids and loss weights ready for the packer.

Conversations (`chat_examples`) and plain text (`text_examples`) tokenize and fit
their own examples: each has "targets" (the whole sequence, nothing in "inputs") and
"targets_weights" (the loss on each token), which the packer lays out as they are.
`task_reader` reads them in Python, record by record, as it reads FLAN's rendered
tasks, so data workers, resuming and mixing work for them unchanged.
"""

import copy as copy_lib
import random
from typing import Any, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf


class IndexedSource(seqio.DataSource):
  """A seqio source read record by record in Python: any sharding, and one pass order
  (`pass_order`) for every reader. Subclasses say how many records a split has."""

  def __init__(self, salt: str, splits: Sequence[str] = ("train",)):
    super().__init__(splits=tuple(splits))
    self._salt = salt
    self._excluded: dict[str, frozenset[int]] = {}  # split -> records never read

  def without(self, split: str, excluded: Sequence[int]) -> "IndexedSource":
    """A copy that never reads records `excluded` of `split` (decontamination); the
    others keep their indices, so each renders exactly as before."""
    copy = copy_lib.copy(self)
    copy._excluded = {**self._excluded, split: frozenset(excluded)}
    return copy

  def count(self, split: str = "train") -> int:
    raise NotImplementedError

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> int:
    return self.count(split)

  def indices(self, split: str, *, shuffle: bool, seed: int | None,
              shard_info: seqio.ShardInfo | None = None, epoch: int = 0) -> list[int]:
    """The record indices one pass (epoch) reads, in order."""
    order = pass_order(self.count(split), f"{self._salt}:{split}", shuffle=shuffle, seed=seed,
                       shard_info=shard_info, epoch=epoch)
    excluded = self._excluded.get(split)
    return [i for i in order if i not in excluded] if excluded else order


class ExampleSource(IndexedSource):
  """Examples by split and index; subclasses say how many and make each one."""

  _SIGNATURE = {"inputs": tf.TensorSpec([None], tf.int32),
                "targets": tf.TensorSpec([None], tf.int32),
                "targets_weights": tf.TensorSpec([None], tf.int32),
                "inputs_pretokenized": tf.TensorSpec([], tf.string),
                "targets_pretokenized": tf.TensorSpec([], tf.string)}

  def example(self, split: str, index: int,
              sequence_length: Mapping[str, int] | None) -> dict[str, Any] | None:
    """Example `index` of `split`, fitted to the row (inputs + targets lengths); None
    when nothing would be left to train (the packer counts it)."""
    raise NotImplementedError

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    """The same examples through tf.data, for seqio's own readers."""
    del use_cached, num_epochs
    order = lambda: self.indices(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    fields = list(self._SIGNATURE)
    examples = lambda: ({k: e[k] for k in fields} for e in
                        (self.example(split, i, sequence_length) for i in order())
                        if e is not None)
    return tf.data.Dataset.from_generator(examples, output_signature=self._SIGNATURE)


def pass_order(count: int, salt: str, *, shuffle: bool, seed: int | None,
               shard_info: seqio.ShardInfo | None, epoch: int) -> list[int]:
  """The record indices one pass (epoch) reads, in order: this host's shard, shuffled
  per epoch by the seed. Shuffling indices before rendering costs nothing; a shuffle
  buffer after rendering would render thousands of examples of every task first."""
  indices = list(range(count))
  if shard_info:
    indices = indices[shard_info.index::shard_info.num_shards]
  if shuffle:
    random.Random(f"{salt}:{seed}:epoch{epoch}").shuffle(indices)
  return indices


def weighted_example(ids: np.ndarray, weights: np.ndarray, text: str, **extra) -> dict[str, Any]:
  """An example the packer lays out with its own loss weights."""
  return {"inputs": np.zeros(0, np.int32), "targets": np.asarray(ids, np.int32),
          "targets_weights": np.asarray(weights, np.int32), "inputs_pretokenized": "",
          "targets_pretokenized": text, **extra}

"""Training batches: a seqio task or mixture, packed, per host, as numpy.

For a decoder-only model each example's inputs and targets become one decoder
sequence (seqio's prefix-LM features); for an encoder-decoder one the inputs go to
the encoder and the targets to the decoder (seqio's encoder-decoder features).
Several examples share a row with `segment_ids` and restarting `positions`, so the
model can keep packed examples from attending to one another. Loss weights are 1
on target tokens only. Packing is best-fit (`packing.py`); unpacked batches come
from seqio's PrefixLMFeatureConverter or EncDecFeatureConverter.

Each host reads its own shard of every task (seqio.ShardInfo) and produces its slice
of the global batch. Resuming at step N skips the first N batches of the same
deterministic stream, so a resumed run sees exactly the data a straight run would.
"""

from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import packing, registry
from flan_jax.errors import UserError

Batch = dict[str, np.ndarray]


def feature_converter(pack: bool, encoder_decoder: bool = False) -> seqio.FeatureConverter:
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
) -> Iterator[Batch]:
  """An endless iterator of this host's part of each global batch.

  `bos_id` starts every decoder sequence (seqio uses 0; see `packing`).
  """
  mixture_or_task = registry.get_mixture_or_task(mixture_or_task_name)  # clear unknown-name error
  if global_batch_size % num_shards:
    raise UserError(
        f"BATCH_SIZE={global_batch_size} must be divisible by the number of hosts ({num_shards}).")
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  rows_per_batch = global_batch_size // num_shards
  if pack:
    examples = mixture_or_task.get_dataset(
        dict(task_feature_lengths), split="train", use_cached=False, shuffle=True, seed=seed,
        shard_info=shard_info, num_epochs=None, trim_output_features=False)
    examples = examples.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
    rows = packing.pack(examples.prefetch(tf.data.AUTOTUNE).as_numpy_iterator(),
                        task_feature_lengths, name=mixture_or_task_name,
                        encoder_decoder=encoder_decoder, bos_id=bos_id)
    batches = _stack_rows(rows, rows_per_batch)
    for _ in range(skip_batches):
      next(batches)
    return batches
  dataset = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths),
      dataset_split="train",
      shuffle=True,
      num_epochs=None,
      feature_converter=feature_converter(pack=False, encoder_decoder=encoder_decoder),
      shard_info=shard_info,
      use_cached=False,
      seed=seed,
  )
  dataset = dataset.batch(rows_per_batch, drop_remainder=True)
  dataset = dataset.skip(skip_batches).prefetch(tf.data.AUTOTUNE)
  return (_with_bos(batch, bos_id) for batch in dataset.as_numpy_iterator())


def _with_bos(batch: Batch, bos_id: int) -> Batch:
  """seqio starts each unpacked decoder row with 0; put the model's BOS there instead."""
  if bos_id:
    tokens = batch["decoder_input_tokens"].copy()  # tf.data's arrays are read-only
    tokens[:, 0] = bos_id
    batch = {**batch, "decoder_input_tokens": tokens}
  return batch


def _stack_rows(rows: Iterator[Batch], rows_per_batch: int) -> Iterator[Batch]:
  while True:
    chunk = [row for _, row in zip(range(rows_per_batch), rows)]
    if len(chunk) < rows_per_batch:
      return
    yield {k: np.stack([row[k] for row in chunk]) for k in chunk[0]}

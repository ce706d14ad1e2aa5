"""Packing changes nothing for an example: its loss is the same packed or alone."""

import jax
import numpy as np
import seqio
import tensorflow as tf

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import prefix_lm_converter
from flan_jax.models.decoder import Decoder
from flan_jax.training.train_step import dummy_inputs, per_token_loss
from tiny import TINY_DECODER

LENGTHS = {"inputs": 128, "targets": 32}


def _examples(count=9):
  task = seqio.get_mixture_or_task("default_list_sort")
  dataset = task.get_dataset(LENGTHS, split="validation", shuffle=False)
  return [{"inputs": ex["inputs"], "targets": ex["targets"]}
          for ex in dataset.take(count).as_numpy_iterator()]


def _convert(examples, pack):
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  converted = prefix_lm_converter(pack)(dataset, LENGTHS)
  rows = list(converted.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _per_example_losses_packed(model, params, batch):
  token_loss = np.asarray(per_token_loss(model, params, batch)) * batch["decoder_loss_weights"]
  losses = []
  for row in range(token_loss.shape[0]):
    for segment in np.unique(batch["decoder_segment_ids"][row]):
      if segment:
        losses.append(token_loss[row][batch["decoder_segment_ids"][row] == segment].sum())
  return np.array(losses)


def test_packed_batch_gives_each_example_its_unpacked_loss():
  model = Decoder(TINY_DECODER)
  params = model.init(jax.random.key(0), *dummy_inputs(8))["params"]
  examples = _examples()
  packed = _convert(examples, pack=True)
  assert packed["decoder_target_tokens"].shape[0] < len(examples)  # really packed
  packed_losses = _per_example_losses_packed(model, params, packed)

  single = _convert(examples, pack=False)
  single_losses = (np.asarray(per_token_loss(model, params, single)) * single["decoder_loss_weights"]).sum(axis=1)
  np.testing.assert_allclose(packed_losses, single_losses, rtol=1e-5)

  # The check has teeth: letting packed examples attend to each other changes the losses.
  leaky = dict(packed, decoder_segment_ids=np.where(packed["decoder_segment_ids"] > 0, 1, 0),
               decoder_positions=np.broadcast_to(np.arange(packed["decoder_positions"].shape[1]),
                                                 packed["decoder_positions"].shape))
  leaky_loss = np.asarray(per_token_loss(model, params, leaky)) * packed["decoder_loss_weights"]
  assert not np.allclose(leaky_loss.sum(), packed_losses.sum(), rtol=1e-4)

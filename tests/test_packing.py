"""Packing changes nothing for an example: its features and loss are the same packed or alone."""

import jax
import numpy as np
import seqio
import tensorflow as tf

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data import packing
from flan_jax.data.pipeline import feature_converter
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.t5 import T5Config
from flan_jax.training.losses import per_token_loss
from flan_jax.training.train_step import init_params
from tiny import TINY_DECODER

LENGTHS = {"inputs": 128, "targets": 32}


def _examples(count=9):
  task = seqio.get_mixture_or_task("default_list_sort_zs_noopt")
  dataset = task.get_dataset(LENGTHS, split="validation", shuffle=False)
  return [{"inputs": ex["inputs"], "targets": ex["targets"]}
          for ex in dataset.take(count).as_numpy_iterator()]


def _convert(examples, pack):
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  converted = feature_converter(pack)(dataset, LENGTHS)
  rows = list(converted.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _pack(examples):
  rows = list(packing.pack(examples, LENGTHS, max_open_rows=4))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _loss(model, params, batch):
  """Per-token losses, compiled: op-by-op T5 takes seconds per call."""
  return np.asarray(jax.jit(lambda p, b: per_token_loss(model, p, b))(params, batch))


def _losses_by_example(model, params, batch):
  """{target tokens of an example: its summed loss}, over every segment of every row."""
  token_loss = _loss(model, params, batch) * batch["decoder_loss_weights"]
  segments = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] > 0).astype(np.int32))
  losses = {}
  for row in range(token_loss.shape[0]):
    for segment in np.unique(segments[row]):
      if segment:
        where = segments[row] == segment
        losses[tuple(batch["decoder_target_tokens"][row][where])] = token_loss[row][where].sum()
  return losses


def test_a_row_of_one_example_has_exactly_seqios_prefix_lm_features():
  example = _examples(1)
  ours, theirs = _pack(example), _convert(example, pack=True)
  for feature in packing.FEATURES:
    np.testing.assert_array_equal(ours[feature], theirs[feature], err_msg=feature)


def test_packed_rows_give_each_example_its_unpacked_loss():
  model = DecoderOnly(TINY_DECODER)
  params = init_params(model, jax.random.key(0), LENGTHS)
  examples = _examples()
  packed = _pack(examples)
  assert packed["decoder_target_tokens"].shape[0] < len(examples)  # really packed
  packed_losses = _losses_by_example(model, params, packed)
  single_losses = _losses_by_example(model, params, _convert(examples, pack=False))
  assert packed_losses.keys() == single_losses.keys()
  for key, loss in single_losses.items():
    np.testing.assert_allclose(packed_losses[key], loss, rtol=1e-5)

  # The check has teeth: letting packed examples attend to each other changes the losses.
  leaky = dict(packed, decoder_segment_ids=np.where(packed["decoder_segment_ids"] > 0, 1, 0),
               decoder_positions=np.broadcast_to(np.arange(packed["decoder_positions"].shape[1]),
                                                 packed["decoder_positions"].shape))
  weights = packed["decoder_loss_weights"]
  leaky_loss = _loss(model, params, leaky) * weights
  packed_loss = _loss(model, params, packed) * weights
  assert np.abs(leaky_loss - packed_loss).max() > 1e-3


def test_best_fit_fills_rows_and_counts_what_it_cuts():
  rng = np.random.default_rng(0)
  examples = [{"inputs": np.ones(rng.integers(5, 60), np.int32), "targets": np.ones(rng.integers(1, 20), np.int32)}
              for _ in range(500)]
  examples.append({"inputs": np.ones(200, np.int32), "targets": np.ones(50, np.int32)})
  packer = packing.BestFitPacker({"inputs": 128, "targets": 32})
  rows = [row for ex in examples for row in packer.add(ex)] + list(packer.flush())
  assert packer.stats.truncated_inputs == 1 and packer.stats.truncated_targets == 1
  kept = sum(min(len(e["inputs"]), 128) + min(len(e["targets"]), 32) for e in examples)
  assert sum(np.count_nonzero(r["decoder_segment_ids"]) for r in rows) == kept  # nothing lost
  assert packer.stats.efficiency > 0.95


def _convert_encoder_decoder(examples, pack):
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  rows = list(feature_converter(pack, encoder_decoder=True)(dataset, LENGTHS).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_an_encoder_decoder_row_of_one_example_has_exactly_seqios_features():
  example = _examples(1)
  ours = {k: np.stack([r[k] for r in packing.pack(example, LENGTHS, encoder_decoder=True)])
          for k in packing.ENCODER_DECODER_FEATURES}
  theirs = _convert_encoder_decoder(example, pack=True)
  assert set(theirs) == set(packing.ENCODER_DECODER_FEATURES)
  for feature in packing.ENCODER_DECODER_FEATURES:
    np.testing.assert_array_equal(ours[feature], theirs[feature], err_msg=feature)


def test_encoder_decoder_rows_respect_both_lengths_and_keep_every_token():
  rng = np.random.default_rng(1)
  # Long inputs with short targets and the reverse: either bin can be the one that fills.
  examples = [{"inputs": np.full(rng.integers(5, 100), 7, np.int32),
               "targets": np.full(rng.integers(1, 25), 9, np.int32)} for _ in range(300)]
  rows = list(packing.pack(examples, LENGTHS, encoder_decoder=True))
  assert all(len(r["encoder_input_tokens"]) == 128 and len(r["decoder_target_tokens"]) == 32
             for r in rows)
  assert len(rows) < len(examples) / 2
  for side, key in (("inputs", "encoder_segment_ids"), ("targets", "decoder_segment_ids")):
    assert sum(np.count_nonzero(r[key]) for r in rows) == sum(len(e[side]) for e in examples)
  for row in rows:  # each segment's encoder and decoder parts belong together
    segments = lambda ids: set(np.unique(ids)) - {0}
    assert segments(row["encoder_segment_ids"]) == segments(row["decoder_segment_ids"])


def test_rows_start_each_example_from_the_models_bos():
  examples = _examples(3)
  for encoder_decoder in (False, True):
    rows = list(packing.pack(examples, LENGTHS, encoder_decoder=encoder_decoder, bos_id=1))
    for row in rows:
      starts = (row["decoder_positions"] == 0) & (row["decoder_segment_ids"] > 0)
      assert np.all(row["decoder_input_tokens"][starts] == 1)
      assert starts.sum() == len(np.unique(row["decoder_segment_ids"][row["decoder_segment_ids"] > 0]))


def test_packed_encoder_decoder_rows_give_each_example_its_unpacked_t5_loss():
  model = EncoderDecoder(T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8,
                                  mlp_dim=64))
  params = init_params(model, jax.random.key(0), LENGTHS)
  examples = _examples()
  packed = {k: np.stack([r[k] for r in packing.pack(examples, LENGTHS, encoder_decoder=True)])
            for k in packing.ENCODER_DECODER_FEATURES}
  assert packed["decoder_target_tokens"].shape[0] < len(examples)  # really packed
  single = _convert_encoder_decoder(examples, pack=False)
  packed_losses = _losses_by_example(model, params, packed)
  single_losses = _losses_by_example(model, params, single)
  assert packed_losses.keys() == single_losses.keys()
  for key, loss in single_losses.items():
    np.testing.assert_allclose(packed_losses[key], loss, rtol=1e-5)
  # Without segment ids the encoder's packed examples would read each other.
  leaky = dict(packed, encoder_segment_ids=(packed["encoder_segment_ids"] > 0).astype(np.int32))
  weights = packed["decoder_loss_weights"]
  assert np.abs(_loss(model, params, leaky) * weights
                - _loss(model, params, packed) * weights).max() > 1e-3


def test_unpacked_batches_start_from_the_models_bos_too():
  from flan_jax.data.pipeline import train_batches
  lengths = {"inputs": 32, "targets": 8}
  plain = next(train_batches("default_add", lengths, 2, seed=0, pack=False))
  with_bos = next(train_batches("default_add", lengths, 2, seed=0, pack=False, bos_id=5))
  assert np.all(plain["decoder_input_tokens"][:, 0] == 0)
  assert np.all(with_bos["decoder_input_tokens"][:, 0] == 5)
  np.testing.assert_array_equal(with_bos["decoder_input_tokens"][:, 1:],
                                plain["decoder_input_tokens"][:, 1:])


def test_packed_conversations_give_each_its_unpacked_loss_on_assistant_tokens_only():
  from flan_jax.data import chat_examples, chat_templates, vocabularies
  template, vocabulary = chat_templates.builtin("chatml"), vocabularies.byte_vocabulary()
  lengths = {"inputs": 0, "targets": 320}  # a conversation here is about 90 tokens
  conversations = [[{"role": "user", "content": f"What is {i} + {i}?"},
                    {"role": "assistant", "content": str(2 * i)},
                    {"role": "user", "content": "Double it."},
                    {"role": "assistant", "content": str(4 * i)}] for i in range(6)]
  examples = []
  for turns in conversations:
    ids, weights = chat_examples.tokenize(template, vocabulary, turns)
    examples.append({"inputs": np.zeros(0, np.int32), "targets": ids, "targets_weights": weights})
  packed = {k: np.stack([r[k] for r in rows]) for rows in [list(packing.pack(examples, lengths))]
            for k in rows[0]}
  single = {k: np.stack([r[k] for r in rows])
            for rows in [list(packing.pack(examples, lengths, max_examples_per_row=1))]
            for k in rows[0]}
  assert packed["decoder_target_tokens"].shape[0] < len(examples)  # really packed
  assert packed["decoder_loss_weights"].sum() == sum(e["targets_weights"].sum() for e in examples)
  model = DecoderOnly(TINY_DECODER)
  params = init_params(model, jax.random.key(0), lengths)
  packed_losses = _losses_by_example(model, params, packed)
  single_losses = _losses_by_example(model, params, single)
  assert packed_losses.keys() == single_losses.keys() and len(packed_losses) == len(examples)
  for key, loss in single_losses.items():
    np.testing.assert_allclose(packed_losses[key], loss, rtol=1e-5)

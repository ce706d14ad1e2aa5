"""Dropout: applied only when training hands the model an rng, reproducible from the
seed and the step, so evaluation is unchanged and a resumed run equals a straight one."""

import dataclasses
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.layer_stack import dropout
from flan_jax.models.t5 import T5Config
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

LENGTHS = {"inputs": 24, "targets": 8}
TINY_T5 = T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                   num_encoder_layers=2, num_decoder_layers=2)


class _Drop(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x):
    return dropout(self, x, self.rate)


def test_dropout_zeroes_about_rate_of_units_and_rescales_the_rest():
  x = jnp.full((200, 500), 2.0)
  out = np.asarray(_Drop(0.3).apply({}, x, rngs={"dropout": jax.random.key(0)}))
  dropped = np.mean(out == 0)
  assert abs(dropped - 0.3) < 0.01, dropped
  np.testing.assert_allclose(out[out != 0], 2.0 / 0.7, rtol=1e-6)
  # Without an rng (evaluation, decoding) it is the identity.
  np.testing.assert_array_equal(_Drop(0.3).apply({}, x), x)


def _batch(network):
  batch = next(train_batches("default_add", LENGTHS, 4, seed=0,
                             encoder_decoder=network.encoder_decoder))
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _jitted_logits(network):
  evaluating = jax.jit(lambda params, batch: network.logits(params, batch))
  training = jax.jit(lambda params, batch, rng: network.logits(params, batch, dropout_rng=rng))
  return evaluating, training


# The scanned decoder covers the decoder's dropout and its per-layer rngs under scan.
@pytest.mark.parametrize("config", [dataclasses.replace(TINY_DECODER, scan_layers=True), TINY_T5],
                         ids=["decoder_scanned", "t5"])
def test_dropout_changes_training_logits_only(config):
  family = EncoderDecoder if isinstance(config, T5Config) else DecoderOnly
  plain, dropping = family(config), family(dataclasses.replace(config, dropout_rate=0.2))
  params = jax.jit(lambda rng: step_lib.init_params(plain, rng, LENGTHS))(jax.random.key(0))
  batch = _batch(plain)
  (plain_eval, plain_train), (drop_eval, drop_train) = map(_jitted_logits, (plain, dropping))
  reference = plain_eval(params, batch)
  # Evaluation (no rng) is exactly the model without dropout.
  np.testing.assert_array_equal(drop_eval(params, batch), reference)
  # Training logits differ, are reproducible from the rng, and change with it.
  first = drop_train(params, batch, jax.random.key(1))
  again = drop_train(params, batch, jax.random.key(1))
  other = drop_train(params, batch, jax.random.key(2))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, reference, atol=1e-3)
  assert not np.allclose(first, other, atol=1e-3)
  # A rate of 0 ignores the rng.
  np.testing.assert_allclose(plain_train(params, batch, jax.random.key(1)), reference,
                             rtol=0, atol=1e-6)


def _train(model_dir, model, steps=4):
  config = TrainerConfig(train_steps=steps, checkpoint_every=2, log_every=1, progress_bar=False)
  batches = lambda start, state=None: train_batches("default_add", LENGTHS, 8, seed=0,
                                                    skip_batches=start, state=state)
  return train(DecoderOnly(model), OptimizerConfig(learning_rate=3e-3, warmup_steps=0), config,
               batches, str(model_dir), LENGTHS)


def test_a_run_with_dropout_resumes_exactly_and_differs_from_one_without(tmp_path):
  model = dataclasses.replace(TINY_DECODER, dropout_rate=0.1)
  straight = _train(tmp_path / "straight", model)
  interrupted = tmp_path / "interrupted"
  for part in ("checkpoints", "data_state"):
    shutil.copytree(tmp_path / "straight" / part, interrupted / part)
  shutil.rmtree(interrupted / "checkpoints" / "4")
  resumed = _train(interrupted, model)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  without = _train(tmp_path / "without", TINY_DECODER)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(straight.params),
                                                    jax.tree.leaves(without.params)))

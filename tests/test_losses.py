"""The loss is an argument of the train step: the default cross-entropy against a hand
computation, a loss written from the targets' log-probabilities trains like it, and
the trainer logs whatever metrics a loss returns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.models.families import DecoderOnly
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

LENGTHS = {"inputs": 64, "targets": 16}
NETWORK = DecoderOnly(TINY_DECODER)


def _batch(rows=8):
  return next(train_batches("default_add", LENGTHS, rows, seed=0))


def _params():
  return jax.jit(lambda rng: step_lib.init_params(NETWORK, rng, LENGTHS))(jax.random.key(0))


def log_prob_loss(family, params, batch, rng):
  """Cross-entropy without z-loss, written from `token_log_probs`; "targets" counts the
  weighted tokens, which the step divides by that weight: 1."""
  log_probs = losses.token_log_probs(family, params, batch, rng)
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  return -log_probs.sum(), weights.sum(), {"loss": -log_probs.sum(), "targets": weights.sum()}


def test_cross_entropy_sums_optax_cross_entropy_and_the_z_loss_over_target_tokens():
  params, batch = _params(), {k: jnp.asarray(v) for k, v in _batch().items()}
  loss_sum, weight, metrics = jax.jit(lambda p, b: losses.cross_entropy_loss(z_loss=1e-3)(
      NETWORK, p, b, jax.random.key(0)))(params, batch)

  logits = NETWORK.logits(params, batch)
  weights = np.asarray(batch["decoder_loss_weights"], np.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
  z = 1e-3 * np.square(np.asarray(jax.nn.logsumexp(logits, axis=-1)))
  assert weight == weights.sum() > 0
  np.testing.assert_allclose(metrics["loss"], (np.asarray(ce) * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"], (z * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(loss_sum, metrics["loss"] + metrics["z_loss"], rtol=1e-6)


def test_token_log_probs_are_minus_the_cross_entropy_on_target_tokens_only():
  params, batch = _params(), {k: jnp.asarray(v) for k, v in _batch().items()}
  log_probs = np.asarray(losses.token_log_probs(NETWORK, params, batch))
  ce = np.asarray(losses.per_token_loss(NETWORK, params, batch))
  weights = np.asarray(batch["decoder_loss_weights"])
  np.testing.assert_allclose(log_probs, -ce * weights, rtol=1e-5, atol=1e-5)
  assert (log_probs[weights == 0] == 0).all() and (log_probs[weights > 0] < 0).all()


def _steps(loss_fn, microbatches=1, steps=2):
  optimizer = make_optimizer(OptimizerConfig(warmup_steps=0), 10)
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  state, shardings = step_lib.init_train_state(NETWORK, optimizer, mesh, LENGTHS, seed=0)
  step = step_lib.make_train_step(NETWORK, optimizer, mesh, shardings, loss_fn,
                                  microbatches=microbatches)
  batches = train_batches("default_add", LENGTHS, 8, seed=0)
  for _ in range(steps):
    state, metrics = step(state, step_lib.global_batch(next(batches), mesh))
  return state, metrics


def test_a_loss_from_log_probabilities_trains_as_cross_entropy_without_z_loss():
  default, default_metrics = _steps(losses.cross_entropy_loss(z_loss=0.0))
  written, written_metrics = _steps(log_prob_loss)
  np.testing.assert_allclose(default_metrics["loss"], written_metrics["loss"], rtol=1e-5)
  assert written_metrics["targets"] == 1.0  # a sum over tokens, divided by the tokens
  assert "z_loss" not in written_metrics and "z_loss" in default_metrics
  for a, b in zip(jax.tree.leaves(default.params), jax.tree.leaves(written.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_microbatches_divide_any_loss_by_the_whole_batch_weight():
  whole, whole_metrics = _steps(log_prob_loss, steps=1)
  sliced, sliced_metrics = _steps(log_prob_loss, microbatches=4, steps=1)
  for key in ("loss", "targets", "grad_norm"):
    np.testing.assert_allclose(whole_metrics[key], sliced_metrics[key], rtol=1e-6)
  # (the gradient norm catches a wrong scale, which Adam's update would hide)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sliced.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_the_trainer_logs_the_metrics_its_loss_returns(tmp_path):
  batches = lambda start, state=None: train_batches("default_add", LENGTHS, 8, seed=0,
                                                    skip_batches=start, state=state)
  config = TrainerConfig(train_steps=2, log_every=1, progress_bar=False)
  train(NETWORK, OptimizerConfig(), config, batches, str(tmp_path), LENGTHS,
        loss_fn=log_prob_loss)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  for record in records:
    assert list(record)[:6] == ["step", "loss", "targets", "grad_norm", "param_norm",
                                "skipped_steps"]
    assert "z_loss" not in record and record["targets"] == 1.0

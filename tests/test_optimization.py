"""Optimizers, schedules, gradient accumulation and label smoothing, each against an
independent computation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import UserError
from flan_jax.models.families import DecoderOnly
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from tiny import TINY_DECODER

LENGTHS = {"inputs": 64, "targets": 16}


def _one_step(microbatches: int, optimizer_config=OptimizerConfig(warmup_steps=0)):
  network = DecoderOnly(TINY_DECODER)
  optimizer = make_optimizer(optimizer_config, 10)
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, seed=0)
  step = step_lib.make_train_step(network, optimizer, mesh, shardings, microbatches=microbatches)
  batch = next(train_batches("default_add", LENGTHS, 32, seed=0))
  return step(state, step_lib.global_batch(batch, mesh))


def test_four_microbatches_of_eight_equal_one_batch_of_thirty_two():
  whole, whole_metrics = _one_step(1)
  sliced, sliced_metrics = _one_step(4)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sliced.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  for key in ("loss", "z_loss", "grad_norm"):
    np.testing.assert_allclose(float(whole_metrics[key]), float(sliced_metrics[key]), rtol=1e-6)


def test_label_smoothing_equals_optax_cross_entropy_with_smoothed_labels():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 11)) * 3
  targets = jnp.array([[1, 5, 10], [0, 0, 7]])
  ce, _ = losses.token_losses(logits, targets, 0.0, label_smoothing=0.1)
  labels = optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.1)
  np.testing.assert_allclose(ce, optax.softmax_cross_entropy(logits, labels), rtol=1e-6)


def test_adafactor_factors_second_moments_with_t5x_defaults():
  params = {"kernel": jnp.ones((128, 384)), "scale": jnp.ones((128,))}
  optimizer = make_optimizer(OptimizerConfig(name="adafactor", schedule="constant",
                                             warmup_steps=0), 100)
  state = optimizer.init(params)
  factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(s, "v_row")][0]
  assert factored.v_row["kernel"].shape == (128,) and factored.v_col["kernel"].shape == (384,)
  # A step is clipped to RMS 1 and scaled by the parameter's RMS (1 here) times the rate.
  grads = {"kernel": jnp.full((128, 384), 50.0), "scale": jnp.full((128,), 50.0)}
  updates, _ = optimizer.update(grads, state, params)
  rms = float(jnp.sqrt(jnp.mean(jnp.square(updates["kernel"]))))
  assert rms == pytest.approx(1e-3, rel=1e-3)


def test_schedules_follow_their_formulas():
  peak, warmup = 2e-3, 10
  value = lambda name, step: float(learning_rate_schedule(
      OptimizerConfig(learning_rate=peak, warmup_steps=warmup, schedule=name), 1000)(step))
  for name in ("constant", "rsqrt", "cosine"):
    assert value(name, 5) == pytest.approx(peak * 5 / warmup)
    assert value(name, warmup) == pytest.approx(peak)
  assert value("constant", 700) == pytest.approx(peak)
  assert value("rsqrt", 40) == pytest.approx(peak * (warmup / 40) ** 0.5)
  assert value("cosine", 1000) == pytest.approx(peak * 0.1)
  with pytest.raises(UserError, match="not one of"):
    OptimizerConfig(schedule="linear")
  with pytest.raises(UserError, match="not one of"):
    OptimizerConfig(name="sgd")


def test_adafactor_trains_with_factored_moments_on_a_sharded_mesh():
  # Matrices of 128 or more get factored moments (rank 1 rows and columns), which
  # cannot take their parameter's 2-D sharding.
  network = DecoderOnly(dataclasses.replace(TINY_DECODER, embed_dim=128, mlp_dim=256))
  optimizer = make_optimizer(OptimizerConfig(name="adafactor", warmup_steps=0), 10)
  mesh = mesh_lib.make_mesh((1, -1, 1))
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, seed=0)
  factored = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(s, "v_row")][0]
  assert factored.v_row["layers_0"]["mlp"]["gate"]["kernel"].ndim == 1  # really factored
  step = step_lib.make_train_step(network, optimizer, mesh, shardings)
  batches = train_batches("default_add", LENGTHS, 8, seed=0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, step_lib.global_batch(next(batches), mesh))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses

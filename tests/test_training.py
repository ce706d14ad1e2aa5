"""Training lowers the loss; checkpoints round-trip; a resumed run equals a straight one."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.t5 import T5Config
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.checkpoints import Checkpointer
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

LENGTHS = {"inputs": 64, "targets": 16}
OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=5)


def _batches(start_step, state=None):
  return train_batches("default_add", LENGTHS, 8, seed=0, skip_batches=start_step, state=state)


def _train(model_dir, steps, checkpoint_every=1000):
  config = TrainerConfig(train_steps=steps, checkpoint_every=checkpoint_every, log_every=1,
                         progress_bar=False)
  return train(DecoderOnly(TINY_DECODER), OPTIMIZER, config, _batches, str(model_dir), LENGTHS)


def _metrics(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_twenty_steps_lower_the_loss_and_log_every_step(tmp_path):
  _train(tmp_path, 20)
  logged = _metrics(tmp_path)
  assert [m["step"] for m in logged] == list(range(1, 21))
  assert {"loss", "learning_rate", "tokens_per_second"} <= set(logged[0])
  first, last = np.mean([m["loss"] for m in logged[:3]]), np.mean([m["loss"] for m in logged[-3:]])
  assert last < first - 1.0, (first, last)
  assert logged[-1]["tokens_per_second"] > 0
  # Goodput on every logged step; no MFU on a CPU, whose peak is not in the table.
  assert {"goodput", "time/step", "time/compile", "time/data_wait"} <= set(logged[-1])
  assert not any("mfu" in m for m in logged)
  # Reported once, with the first step (setup and compilation included).
  assert [m["step"] for m in logged if "time_to_first_step_s" in m] == [1]
  assert logged[0]["time_to_first_step_s"] > 0
  assert os.listdir(tmp_path / "tensorboard" / "train")  # event files written
  assert os.listdir(tmp_path / "checkpoints") == ["20"]  # the final step is always saved


def test_checkpoint_round_trip_restores_an_equal_state(tmp_path):
  model, optimizer = DecoderOnly(TINY_DECODER), make_optimizer(OPTIMIZER, 10)
  mesh = mesh_lib.make_mesh()
  state, shardings = step_lib.init_train_state(model, optimizer, mesh, LENGTHS, seed=3)
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(7, state)
  checkpointer.close()

  restored_from = Checkpointer(str(tmp_path))
  assert restored_from.latest_step() == 7
  abstract = step_lib.abstract_train_state(model, optimizer, shardings, LENGTHS)
  restored = restored_from.restore(7, abstract)
  restored_from.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("saved_data_position", [True, False])
def test_a_resumed_run_ends_exactly_where_a_straight_run_does(tmp_path, saved_data_position):
  straight = _train(tmp_path / "straight", 6, checkpoint_every=3)

  # An interrupted run: its last checkpoint is step 3. With its data position saved the
  # stream restarts there; without (an older run), it is replayed up to step 3.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(tmp_path / "straight" / "checkpoints", interrupted / "checkpoints")
  shutil.rmtree(interrupted / "checkpoints" / "6")
  assert (tmp_path / "straight" / "data_state" / "3" / "host_0.json").exists()
  if saved_data_position:
    shutil.copytree(tmp_path / "straight" / "data_state", interrupted / "data_state")
  resumed = _train(interrupted, 6, checkpoint_every=3)

  assert int(resumed.step) == 6
  assert [m["step"] for m in _metrics(interrupted)] == [4, 5, 6]
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_finished_run_is_not_trained_again(tmp_path):
  _train(tmp_path, 2)
  state = _train(tmp_path, 2)
  assert int(state.step) == 2
  assert len(_metrics(tmp_path)) == 2


def test_bfloat16_compute_keeps_float32_parameters_and_learns(tmp_path):
  import dataclasses
  model = DecoderOnly(dataclasses.replace(TINY_DECODER, dtype="bfloat16"))
  config = TrainerConfig(train_steps=8, log_every=1, progress_bar=False)
  state = train(model, OPTIMIZER, config, _batches, str(tmp_path), LENGTHS)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  losses = [m["loss"] for m in _metrics(tmp_path)]
  assert losses[-1] < losses[0]


def test_twenty_packed_encoder_decoder_steps_lower_the_t5_loss(tmp_path):
  model = EncoderDecoder(T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8,
                                  mlp_dim=64, num_encoder_layers=2, num_decoder_layers=2))
  batches = lambda start, state=None: train_batches(
      "default_add", LENGTHS, 8, seed=0, skip_batches=start, encoder_decoder=True, state=state)
  assert {"encoder_input_tokens", "encoder_segment_ids"} <= set(next(batches(0)))
  config = TrainerConfig(train_steps=20, log_every=1, progress_bar=False)
  train(model, OPTIMIZER, config, batches, str(tmp_path), LENGTHS)
  losses = [m["loss"] for m in _metrics(tmp_path)]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses

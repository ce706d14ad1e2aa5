"""Preference training end to end on stories260K: the reference modes agree on the first
step, a resumed run is bit-identical to a straight one, and the held-out metrics are
logged before and after under TRL's names."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from flan_jax import preference_finetune
from flan_jax.models import convert
from flan_jax.preference_finetune import PreferenceConfig, PreferenceData
from flan_jax.training.trainer import TrainerConfig
from preference_fixtures import TRL_NAMES, pairs_file  # noqa: F401  (pairs_file: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")
LENGTHS = {"inputs": 64, "targets": 64}


def _run(model_dir, pairs_file, steps, reference="frozen", checkpoint_every=2, **loss):
  preference = PreferenceConfig(data=PreferenceData(pairs_file, validation_records=2),
                                reference=reference, pairs_per_row=2, **loss)
  trainer = TrainerConfig(train_steps=steps, checkpoint_every=checkpoint_every, log_every=1,
                          progress_bar=False, prefetch=0, spike_factor=None)
  return preference_finetune.run(model_dir=str(model_dir), preference=preference,
                                 task_feature_lengths=LENGTHS, batch_size=2, trainer=trainer,
                                 initial_checkpoint_path=STORIES)


def _metrics(model_dir):
  return [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]


def test_frozen_and_precomputed_references_give_the_same_first_step(tmp_path, pairs_file):
  frozen = _run(tmp_path / "frozen", pairs_file, 1, "frozen")
  precomputed = _run(tmp_path / "precomputed", pairs_file, 1, "precomputed")
  assert os.path.exists(tmp_path / "precomputed" / preference_finetune.REFERENCE_FILE)
  assert not os.path.exists(tmp_path / "frozen" / preference_finetune.REFERENCE_FILE)
  first = [[m for m in _metrics(tmp_path / mode) if "loss" in m][0]
           for mode in ("frozen", "precomputed")]
  for name in ("loss", *TRL_NAMES):
    assert first[0][name] == pytest.approx(first[1][name], abs=1e-5), name
  # Before training the policy is the reference: every reward is 0, the loss log 2.
  for results in (frozen, precomputed):
    assert results["before"]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert results["before"]["rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert results["before"]["rewards/accuracies"] == 0  # no pair counts a tie
    assert set(TRL_NAMES) <= set(results["after"])
  logged = [m for m in _metrics(tmp_path / "frozen") if "eval/rewards/accuracies" in m]
  assert [m["step"] for m in logged] == [0, 1]


def test_a_resumed_run_is_bit_identical_to_a_straight_one(tmp_path, pairs_file):
  _run(tmp_path / "straight", pairs_file, 4, "precomputed")
  # An interrupted run: its last checkpoint is step 2; the reference log-probs stored
  # with it are read back, not computed again.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
  reference = tmp_path / "resumed" / preference_finetune.REFERENCE_FILE
  stored = reference.read_text()
  _run(tmp_path / "resumed", pairs_file, 4, "precomputed")
  assert reference.read_text() == stored
  straight = convert.load_orbax(str(tmp_path / "straight"), 4)[1]
  resumed = convert.load_orbax(str(tmp_path / "resumed"), 4)[1]
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = lambda d: [m["loss"] for m in _metrics(d) if "loss" in m]
  assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
  # The held-out metrics before training are the first part's, logged once.
  evaluated = lambda d: [(m["step"], m["eval/loss"]) for m in _metrics(d) if "eval/loss" in m]
  assert evaluated(tmp_path / "resumed") == evaluated(tmp_path / "straight")
  assert [step for step, _ in evaluated(tmp_path / "resumed")] == [0, 4]


def test_two_processes_train_what_one_process_trains(tmp_path, pairs_file):
  """The quickstart's settings on the small pairs, full finetuning, over 2 processes
  joined by jax.distributed (a row each), and in this one process: the same losses."""
  import socket
  import subprocess
  import sys
  from flan_jax.training.optimizer import OptimizerConfig
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  two = tmp_path / "two"
  bindings = ["--gin_file=gin/dpo_quickstart.gin", f"--gin.PREFERENCE_DATA='{pairs_file}'",
              "--gin.PreferenceData.validation_records=2", "--gin.TRAIN_STEPS=3",
              "--gin.BATCH_SIZE=2", "--gin.EVAL_PERIOD=0", "--gin.train.log_every=1",
              f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.INITIAL_CHECKPOINT_PATH='{STORIES}'",
              "--gin.PreferenceConfig.reference='precomputed'", "--gin.train.lora=None"]
  result = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "-n", "2", "-p", str(port), "-l",
       str(tmp_path / "logs"), *bindings, f"--gin.MODEL_DIR={two}"],
      cwd=REPO, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  preference = PreferenceConfig(data=PreferenceData(pairs_file, template="zephyr",
                                                    validation_records=2),
                                reference="precomputed", pairs_per_row=1)
  trainer = TrainerConfig(train_steps=3, checkpoint_every=30, log_every=1, progress_bar=False)
  preference_finetune.run(
      model_dir=str(tmp_path / "one"), preference=preference, task_feature_lengths=LENGTHS,
      batch_size=2, trainer=trainer, initial_checkpoint_path=STORIES,
      optimizer=OptimizerConfig(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0))
  logged = lambda d, key: [m[key] for m in _metrics(d) if key in m]
  assert len(logged(two, "loss")) == 3
  np.testing.assert_allclose(logged(two, "loss"), logged(tmp_path / "one", "loss"), atol=1e-5)
  np.testing.assert_allclose(logged(two, "eval/rewards/margins"),
                             logged(tmp_path / "one", "eval/rewards/margins"), atol=1e-5)

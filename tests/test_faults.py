"""Faults cost at most the work since the last save: SIGTERM/SIGINT save and stop, a
diverged loss stops before anything non-finite is saved, a spike stops (or is skipped)
and the rerun resumes from before it, one run per MODEL_DIR."""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax import model_dir as model_dir_lib
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import Interrupted, UserError
from flan_jax.models.families import DecoderOnly
from flan_jax.training.checkpoints import Checkpointer
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.run_lock import LOCK_FILE, RunLock
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER, damage_checkpoint

LENGTHS = {"inputs": 64, "targets": 16}
OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=2)


def _batches_signalling(at_step: int | None, number=signal.SIGTERM):
  """The training stream, sending this process `number` as step `at_step` starts."""
  def batches(start):
    for step, batch in enumerate(train_batches("default_add", LENGTHS, 4, seed=0,
                                               skip_batches=start), start):
      if step == at_step:
        os.kill(os.getpid(), number)
      yield batch
  return batches


def _train(model_dir, steps, batches, optimizer=OPTIMIZER, checkpoint_every=100, **settings):
  # No batches made ahead: the test's stream sends its signal as a step's batch is
  # made, which must then be the step that trains on it.
  config = TrainerConfig(train_steps=steps, checkpoint_every=checkpoint_every, log_every=1,
                         progress_bar=False, prefetch=0, **settings)
  return train(DecoderOnly(TINY_DECODER), optimizer, config, batches, str(model_dir), LENGTHS)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_rerun_ends_as_a_straight_run(tmp_path, number):
  with pytest.raises(Interrupted, match=f"Stopped by {signal.Signals(number).name} at step 4") as e:
    _train(tmp_path / "cut", 8, _batches_signalling(3, number))
  assert e.value.exit_code == 128 + number
  assert Checkpointer(str(tmp_path / "cut" / "checkpoints")).latest_step() == 4
  assert signal.getsignal(number) is not None  # our handler is gone again
  if number == signal.SIGINT:  # the same stop as SIGTERM's, whose resume is checked below
    return
  resumed = _train(tmp_path / "cut", 8, _batches_signalling(None))
  straight = _train(tmp_path / "straight", 8, _batches_signalling(None))
  for ours, theirs in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_sigterm_to_the_cli_saves_and_exits_with_143(tmp_path):
  model_dir = tmp_path / "run"
  process = subprocess.Popen(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/quickstart.gin",
       f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=100000", "--gin.train.log_every=1",
       "--gin.train.evaluate_before=False", "--gin.DecoderConfig.num_layers=1",
       "--gin.DecoderConfig.embed_dim=32", "--gin.train.truncation_sample=0",
       "--gin.train.data_workers=1"],  # a worker process must not keep the run from exiting
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = model_dir / "metrics.jsonl"
  try:
    for _ in range(1200):  # wait (up to 2 minutes) until it trains
      if process.poll() is not None or (
          metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        break
      time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 143, stderr[-3000:]
  saved = Checkpointer(str(model_dir / "checkpoints")).latest_step()
  assert saved and f"Stopped by SIGTERM at step {saved}" in stderr
  assert "Traceback" not in stderr
  # Our message is the last word, not gin's note on which configurable raised it.
  assert stderr.strip().splitlines()[-1].startswith(f"Stopped by SIGTERM at step {saved}:"), (
      stderr[-2000:])
  assert not (model_dir / LOCK_FILE).exists()  # the lock went with the run


def test_a_diverging_loss_stops_at_its_step_and_only_finite_checkpoints_remain(tmp_path):
  explosive = OptimizerConfig(learning_rate=1e12, warmup_steps=0)
  with pytest.raises(UserError, match=r"training diverged at step (\d+)") as e:
    # No spike detection: it would stop the run at the first step, still finite.
    _train(tmp_path, 50, _batches_signalling(None), optimizer=explosive, checkpoint_every=1,
           spike_factor=None)
  bad_step = int(e.value.args[0].split("at step ")[1].split(":")[0])
  checkpoints = Checkpointer(str(tmp_path / "checkpoints"))
  latest = checkpoints.latest_step()
  assert latest == bad_step - 1 and f"step {latest} in" in str(e.value)
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(m["loss"]) for m in logged if m["step"] < bad_step)
  # Every checkpoint kept restores to finite parameters.
  from flan_jax.models import convert
  for step in (latest,):
    params = model_dir_lib.resolve(str(tmp_path)).read_step(step, convert.read_params)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def _logged(model_dir):
  return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_learning_rate_that_ruins_the_weights_stops_before_them_and_the_rerun_trains(tmp_path):
  # The first step with a learning rate (step 2, after warmup's 0) blows the weights up
  # while everything stays finite: the byte model's loss sits at ln(259), its gradient
  # vanishes, and only steps later does anything turn non-finite.
  huge = OptimizerConfig(learning_rate=1e6, warmup_steps=10)
  with pytest.raises(UserError) as e:
    _train(tmp_path, 12, _batches_signalling(None), optimizer=huge, checkpoint_every=1)
  named = int(re.search(r"step (\d+) in \S+/checkpoints", str(e.value)).group(1))
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps()[-1] == named
  # Rerun as advised, with a sane learning rate: it resumes from that checkpoint and trains.
  _train(tmp_path, 12, _batches_signalling(None))
  logged = [m for m in _logged(tmp_path) if m["step"] > named]
  assert [m["step"] for m in logged] == list(range(named + 1, 13))
  assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["param_norm"] < 100
  assert re.match(r"training spiked at step 2: the weights' norm \S+ is \S+ times its median",
                  str(e.value)), str(e.value)


def _batches_with_an_odd_one(at_step: int):
  """The training stream, but the batch of step `at_step` (0-based) has every target
  replaced with a byte the data never holds."""
  def batches(start):
    for step, batch in enumerate(_batches_signalling(None)(start), start):
      if step == at_step:
        batch = dict(batch, decoder_target_tokens=np.where(
            batch["decoder_loss_weights"] > 0, 258, batch["decoder_target_tokens"]))
      yield batch
  return batches


def test_skip_leaves_the_weights_as_they_were_on_a_spiking_step_and_training_goes_on(
    tmp_path, caplog):
  from flan_jax.models import convert
  # A factor low enough that the odd batch's gradient (twice the usual) is a spike.
  with caplog.at_level("WARNING"):
    _train(tmp_path, 14, _batches_with_an_odd_one(12), optimizer=OptimizerConfig(1e-2, 2),
           checkpoint_every=1, keep_checkpoints=None, spike_factor=1.5, spike_warmup=5,
           spike_action="skip")
  run = model_dir_lib.resolve(str(tmp_path))
  params = [jax.tree.leaves(run.read_step(step, convert.read_params)) for step in (12, 13, 14)]
  assert all(np.array_equal(a, b) for a, b in zip(params[0], params[1]))  # step 13 skipped
  assert not all(np.array_equal(a, b) for a, b in zip(params[1], params[2]))  # 14 trained
  assert [m["skipped_steps"] for m in _logged(tmp_path)] == [0] * 12 + [1, 1]
  assert "Step 13 was skipped: the gradient norm" in caplog.text


def test_skipping_every_step_stops_the_run_after_ten_in_a_row(tmp_path):
  huge = OptimizerConfig(learning_rate=1e6, warmup_steps=10)
  with pytest.raises(UserError, match=r"spiked at step 11: steps 2 to 11 were all skipped as "
                     r"spikes; at step 11, the weights' norm .* no checkpoint from before it"):
    _train(tmp_path, 20, _batches_signalling(None), optimizer=huge, spike_action="skip")
  assert [m["skipped_steps"] for m in _logged(tmp_path)] == list(range(11))


def test_a_gradient_spike_sets_aside_the_checkpoint_of_the_weights_it_was_measured_on(tmp_path):
  with pytest.raises(UserError, match=r"spiked at step 13: the gradient norm .* moved to "
                     r"\S+/checkpoints/12.spiked; the last checkpoint from before it is step 11"):
    _train(tmp_path, 14, _batches_with_an_odd_one(12), optimizer=OptimizerConfig(1e-2, 2),
           checkpoint_every=1, keep_checkpoints=2, spike_factor=1.5, spike_warmup=5)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["11", "12.spiked"]


def test_spike_settings_out_of_range_are_one_clear_error():
  for settings, named in [({"spike_action": "skp"}, "spike_action='skp' is not one of"),
                          ({"spike_factor": 0.5}, "spike_factor must be greater than 1"),
                          ({"spike_warmup": 0}, "spike_warmup must be between 1 and 100")]:
    with pytest.raises(UserError, match=named):
      TrainerConfig(train_steps=10, **settings)


def test_a_checkpoint_from_before_the_spike_window_resumes_with_a_fresh_window(tmp_path):
  from flan_jax.training import mesh as mesh_lib, train_step as step_lib
  from flan_jax.training.optimizer import make_optimizer
  state, _ = step_lib.init_train_state(DecoderOnly(TINY_DECODER), make_optimizer(OPTIMIZER, 4),
                                       mesh_lib.make_mesh(), LENGTHS, seed=0)
  older = Checkpointer(str(tmp_path / "checkpoints"))  # the train state had no window then
  older.save(2, {"step": state.step + 2, "params": state.params, "opt_state": state.opt_state})
  older.close()
  _train(tmp_path, 4, _batches_signalling(None))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # nothing set aside
  assert [m["step"] for m in _logged(tmp_path)] == [3, 4]


def test_a_second_run_on_a_model_dir_is_refused_while_the_first_lives(tmp_path):
  with RunLock(str(tmp_path)):
    with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
      RunLock(str(tmp_path)).acquire()
  assert not (tmp_path / LOCK_FILE).exists()
  with RunLock(str(tmp_path)):  # free again
    pass


def test_a_lock_left_by_a_dead_process_or_a_silent_host_is_taken_over(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  lock = tmp_path / LOCK_FILE
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead)}))
  with RunLock(str(tmp_path)):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
  # Another host: taken over only once its heartbeat is older than stale_after_s.
  lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
  with pytest.raises(UserError, match="in use by process 1 on elsewhere"):
    RunLock(str(tmp_path), stale_after_s=600).acquire()
  os.utime(lock, (0, 0))
  with RunLock(str(tmp_path), stale_after_s=600):
    assert json.loads(lock.read_text())["host"] != "elsewhere"


def test_a_damaged_newest_checkpoint_is_skipped_for_the_older_intact_one(tmp_path, caplog):
  batches = _batches_signalling(None)
  _train(tmp_path / "run", 4, batches, checkpoint_every=2)
  damage_checkpoint(tmp_path / "run" / "checkpoints" / "4")
  with caplog.at_level("WARNING"):
    resumed = _train(tmp_path / "run", 6, batches, checkpoint_every=2)
  assert "Checkpoint 4 in" in caplog.text and "does not restore" in caplog.text
  straight = _train(tmp_path / "straight", 6, batches, checkpoint_every=2)
  for ours, theirs in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  for step in ("2", "4", "6"):
    damage_checkpoint(tmp_path / "run" / "checkpoints" / step)
  with pytest.raises(UserError, match="No checkpoint in .* restores: step 6 .*step 4 .*step 2"):
    _train(tmp_path / "run", 8, batches, checkpoint_every=2)


def _stateful_batches(start, state=None):
  """The training stream, with a position that is saved beside each checkpoint."""
  return train_batches("default_add", LENGTHS, 4, seed=0, skip_batches=start, state=state)


def test_an_empty_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, caplog):
  _train(tmp_path, 8, _stateful_batches, checkpoint_every=2)  # keeps 3: 4, 6 and 8
  checkpoints, data_state = tmp_path / "checkpoints", tmp_path / "data_state"
  assert sorted(os.listdir(checkpoints)) == ["4", "6", "8"]
  assert sorted(os.listdir(data_state)) == ["4", "6", "8"]  # 2's went with its checkpoint
  # A save interrupted before any file was written, and one killed while writing.
  shutil.rmtree(checkpoints / "8")
  (checkpoints / "8").mkdir()
  (checkpoints / "10.orbax-checkpoint-tmp-1").mkdir()
  (checkpoints / "10.orbax-checkpoint-tmp-1" / "part").write_text("x")
  with caplog.at_level("WARNING"):
    state = _train(tmp_path, 8, _stateful_batches, checkpoint_every=2)
  assert int(state.step) == 8
  assert "Checkpoint 8 in" in caplog.text and "Checkpoint 6 in" not in caplog.text
  assert sorted(os.listdir(checkpoints)) == ["4", "6", "8", "8.damaged"]
  assert sorted(os.listdir(data_state)) == ["4", "6", "8"]


def test_a_data_position_that_cannot_be_written_is_one_error_naming_that_step(
    tmp_path, monkeypatch):
  from flan_jax import paths
  real = paths.write_atomically

  def disk_full_for_data_positions(path, text):
    if "data_state" in str(path):
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    real(path, text)

  monkeypatch.setattr(paths, "write_atomically", disk_full_for_data_positions)
  with pytest.raises(UserError, match=r"saving the data position of step 2 to \S+host_0.json "
                                      r"failed: No space left on device\. No checkpoint"):
    _train(tmp_path, 2, _stateful_batches, checkpoint_every=2)


def test_resuming_with_another_model_is_one_clear_error(tmp_path):
  import dataclasses
  from flan_jax import finetune
  from flan_jax.models import convert
  (tmp_path / "checkpoints").mkdir()
  convert.save_run_config(str(tmp_path), TINY_DECODER)
  finetune.check_same_model(str(tmp_path), dataclasses.replace(TINY_DECODER, dtype="bfloat16"))
  with pytest.raises(UserError, match=r"another model: num_layers=2 \(now 3\)"):
    finetune.check_same_model(str(tmp_path), dataclasses.replace(TINY_DECODER, num_layers=3))


def test_a_resumed_run_logs_each_step_once_in_metrics_and_tensorboard(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  batches = _batches_signalling(None)
  _train(tmp_path / "run", 4, batches, checkpoint_every=2)
  # Killed after logging step 4 but before its checkpoint finished: the rerun resumes at 2.
  import shutil
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "4")
  with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 1.')  # and a line cut short by the kill
  _train(tmp_path / "run", 6, batches, checkpoint_every=2)
  _train(tmp_path / "straight", 6, batches, checkpoint_every=2)
  logged = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  straight = [json.loads(l) for l in
              (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
  assert [m["loss"] for m in logged] == [m["loss"] for m in straight]
  events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "train"))
  events.Reload()
  tag = "loss" if "loss" in events.Tags()["scalars"] else None
  steps = ([e.step for e in events.Scalars(tag)] if tag else
           [e.step for e in events.Tensors("loss")])
  assert steps == [1, 2, 3, 4, 5, 6]


def test_too_little_disk_space_stops_at_that_save_and_the_rerun_resumes(tmp_path, monkeypatch):
  from flan_jax.training import checkpoints
  real = checkpoints.shutil.disk_usage
  calls = []

  def disk_usage(path):  # room for the first save only
    calls.append(path)
    usage = real(path)
    return usage._replace(free=usage.free if len(calls) == 1 else 1000)

  monkeypatch.setattr(checkpoints.shutil, "disk_usage", disk_usage)
  with pytest.raises(UserError, match=r"not enough disk space to save checkpoint 4: .*"
                                      r"Checkpoint 2 is intact"):
    _train(tmp_path, 6, _batches_signalling(None), checkpoint_every=2)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing half-written
  monkeypatch.setattr(checkpoints.shutil, "disk_usage", real)
  state = _train(tmp_path, 6, _batches_signalling(None), checkpoint_every=2)
  assert int(state.step) == 6
  assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
          ] == [1, 2, 3, 4, 5, 6]


FILE_SIZE_LIMITED = """
import resource, signal, sys
sys.path.insert(0, "tests")
import flan_jax_tasks.default_mixture
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import UserError
from flan_jax.models.families import DecoderOnly
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER, damage_checkpoint

# Every file is limited to argv[2] bytes, less than some of the checkpoint's arrays: each
# write of them fails with EFBIG, as on a full disk with ENOSPC.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
lengths = {"inputs": 64, "targets": 16}
batches = lambda start, state=None: train_batches("default_add", lengths, 4, seed=0,
                                                  skip_batches=start, state=state)
try:
  train(DecoderOnly(TINY_DECODER), OptimizerConfig(), TrainerConfig(
      train_steps=8, checkpoint_every=2, log_every=1, progress_bar=False), batches,
      sys.argv[1], lengths)
except UserError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(1)
"""


def _train_with_file_size_limit(model_dir, limit: int) -> subprocess.CompletedProcess:
  # Without the persistent compilation cache, whose entries the limit would cut short.
  return subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(model_dir), str(limit)],
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        env=dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false"),
                        capture_output=True, text=True, timeout=300)


# One-line records from logging, absl's C++ start-up and the XLA runtime.
_LOG_RECORD = re.compile(r"^([A-Z]+:[\w.]+:|[IWE]\d{4} |WARNING: All log messages)")


def test_a_save_that_cannot_be_written_in_a_resumed_run_is_one_error_line(tmp_path):
  _train(tmp_path, 2, _stateful_batches, optimizer=OptimizerConfig(), checkpoint_every=2)
  # 40 kB: the largest arrays of checkpoint 4 fail to be written, the rest are written,
  # and the writes still pending when the save fails find their event loop closed.
  result = _train_with_file_size_limit(tmp_path, 40_000)
  assert result.returncode == 1, result.stderr[-3000:]
  # Orbax's writer threads may log their failures, in one line each; nothing else but
  # the run's error is printed.
  not_records = [l for l in result.stderr.splitlines() if not _LOG_RECORD.match(l)]
  assert len(not_records) == 1, f"{len(not_records)} lines:\n" + "\n".join(not_records[:40])
  assert re.match(r"error: saving checkpoint 4 to \S+ failed: File too large\. Checkpoint 2 "
                  r"is intact", not_records[0])
  # Stopped within a step of the failed save, not at the next one (step 6).
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] <= 6 and "checkpoint 6" not in result.stderr

"""MODEL_DIR in a bucket (gs://): every file flan_jax itself writes there goes through
etils.epath, tested against a fake bucket that, like an object store, has no append.

The fake maps gs://bucket/... onto a local directory through epath's own test mock;
orbax and TensorBoard reach buckets through their own clients and are not covered
here (no network).
"""

import dataclasses
import json
import os

import pytest
from etils.epath import gpath, testing as epath_testing

from flan_jax import finetune, job, paths
from flan_jax.errors import UserError
from flan_jax.models import convert
from flan_jax.training import checkpoints, metrics_writer, trainer
from flan_jax.training.run_lock import RunLock
from tiny import TINY_DECODER

RUN = "gs://bucket/run"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bucket/... lives under tmp_path/bucket; opening for append is refused."""
  root = tmp_path / "bucket"
  root.mkdir()
  local = lambda path: os.fspath(path).replace("gs://bucket", str(root), 1)

  def on_path(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def on_two_paths(original, path, target, *args, **kwargs):
    return original(local(path), local(target), *args, **kwargs)

  def open_(original, path, mode):
    assert "a" not in mode, f"appending to {path}: object stores cannot"
    return original(local(path), mode)

  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # no real GCS client
  monkeypatch.chdir(tmp_path)  # a path mistaken for local would land in tmp_path/gs:
  with epath_testing.mock_epath(
      open=open_, exists=on_path, isdir=on_path, listdir=on_path, makedirs=on_path,
      mkdir=on_path, remove=on_path, rmtree=on_path, stat=on_path, glob=on_path,
      walk=on_path, rename=on_two_paths, replace=on_two_paths, copy=on_two_paths):
    yield root
  assert not (tmp_path / "gs:").exists(), "a gs:// path was used as a local path"


class _RecordingSummaryWriter:
  """TensorBoard stand-in: its real writer reaches gs:// through TensorFlow's client."""
  written = []

  def __init__(self, directory):
    self.directory = directory

  def write_scalars(self, step, scalars):
    self.written.append((self.directory, step, dict(scalars)))

  def flush(self):
    pass

  def close(self):
    pass


def test_model_dir_in_a_bucket_is_created_and_probed_without_leftovers(bucket):
  assert job.ensure_writable_dir(RUN) == RUN
  assert (bucket / "run").is_dir() and not os.listdir(bucket / "run")


def test_metrics_are_rewritten_whole_and_rewound_without_appending(bucket, monkeypatch):
  monkeypatch.setattr(metrics_writer.metric_writers, "SummaryWriter", _RecordingSummaryWriter)
  paths.makedirs(RUN)
  writer = metrics_writer.MetricsWriter(RUN, remote_flush_s=0.0)
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  lines = (bucket / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
  # A resumed run at step 3 drops 4 and 5, then logs on from there.
  assert metrics_writer.rewind(RUN, 3) == 2
  writer = metrics_writer.MetricsWriter(RUN, remote_flush_s=3600.0)
  writer.write(4, {"loss": 0.2})
  assert len((bucket / "run" / "metrics.jsonl").read_text().splitlines()) == 3  # not yet
  writer.close()
  assert [r["step"] for r in metrics_writer.read_records(RUN)] == [1, 2, 3, 4]
  assert _RecordingSummaryWriter.written[-1][0] == f"{RUN}/tensorboard/train"


def test_data_positions_are_saved_and_pruned_beside_the_checkpoints(bucket):
  class Stream:
    def state(self):
      return {"position": 7}

  class KeptSteps:
    def steps_kept_after_saving(self, step):
      return [4, step]

  for step in (2, 4, 6):
    trainer._save_data_state(RUN, step, Stream(), KeptSteps())
  assert sorted(os.listdir(bucket / "run" / "data_state")) == ["4", "6"]
  assert trainer._load_data_state(RUN, 6) == {"position": 7}
  assert trainer._load_data_state(RUN, 8) is None


def test_the_run_lock_works_in_a_bucket(bucket):
  paths.makedirs(RUN)
  with RunLock(RUN):
    assert (bucket / "run" / ".run_lock").exists()
    with pytest.raises(UserError, match="is in use by process"):
      RunLock(RUN).acquire()
  assert not (bucket / "run" / ".run_lock").exists()


def test_the_run_config_is_written_and_checked_in_a_bucket(bucket):
  paths.makedirs(f"{RUN}/checkpoints")
  convert.save_run_config(RUN, TINY_DECODER)
  assert json.loads((bucket / "run" / convert.CONFIG_FILE).read_text())["num_layers"] == 2
  finetune.check_same_model(RUN, TINY_DECODER)
  with pytest.raises(UserError, match="another model"):
    finetune.check_same_model(RUN, dataclasses.replace(TINY_DECODER, num_layers=3))


def test_checkpoints_keep_a_bucket_url_as_it_is(monkeypatch):
  seen = []

  class Manager:
    def __init__(self, directory, **settings):
      seen.append(directory)

  monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", Manager)
  checkpoints.Checkpointer(f"{RUN}/checkpoints")
  checkpoints.Checkpointer("relative/checkpoints")
  assert seen == [f"{RUN}/checkpoints", os.path.abspath("relative/checkpoints")]

"""The entry point: gin overrides reach the run, and bad input gets one clear line."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "flan_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _assert_clean_error(result, *fragments):
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(error_lines) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in error_lines[0]


def test_quickstart_config_with_overrides_writes_config_metrics_and_eval(tmp_path):
  model_dir = tmp_path / "run"
  result = _run("--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={model_dir}",
                "--gin.TRAIN_STEPS=3",
                "--gin_bindings=EvalConfig.max_examples_per_task = 2",
                "--gin.EvalConfig.batch_size=2", "--gin.DecoderConfig.num_layers=1",
                "--gin.DecoderConfig.embed_dim=32", "--gin.train.log_every=1",
                "--gin.train.truncation_sample=0")
  assert result.returncode == 0, result.stderr[-3000:]
  config = (model_dir / "config.gin").read_text()
  assert "TRAIN_STEPS = 3" in config and "DecoderConfig.num_layers = 1" in config
  logged = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged if "loss" in m] == [1, 2, 3]
  # The held-out curve's ends: before (step 0) and after (step 3), as in heldout.json.
  curve = [(m["step"], m["eval/heldout_mean/accuracy"]) for m in logged
           if "eval/heldout_mean/accuracy" in m]
  heldout = json.loads((model_dir / "eval" / "heldout.json").read_text())
  assert set(heldout) == {"before", "after", "groups"}
  assert "default_same_word_zs_opt" in heldout["groups"]["heldout"]  # FLAN's zero-shot options task
  for results in (heldout["before"], heldout["after"]):
    assert "default_same_word_zs_opt/accuracy" in results  # a held-out task
    assert "default_same_word_zs_opt/majority_baseline" in results  # ranked: with its baseline
    assert "default_same_word_fs_noopt/accuracy" in results  # a held-out variant
    assert "default_add_zs_opt/accuracy" in results  # a seen task's validation split
    assert "heldout_mean/accuracy" in results and "seen_mean/accuracy" in results
    assert "heldout_fs_noopt_mean/accuracy" in results
  assert curve == [(0, heldout["before"]["heldout_mean/accuracy"]),
                   (3, heldout["after"]["heldout_mean/accuracy"])]
  assert "Evaluation before and after finetuning" in result.stdout


def test_the_t5_quickstart_trains_and_evaluates_an_encoder_decoder(tmp_path):
  model_dir = tmp_path / "run"
  result = _run("--gin_file=gin/quickstart_t5.gin", f"--gin.MODEL_DIR={model_dir}",
                "--gin.TRAIN_STEPS=2", "--gin.EvalConfig.max_examples_per_task=2",
                "--gin.EvalConfig.batch_size=2", "--gin.T5Config.embed_dim=32",
                "--gin.train.log_every=1", "--gin.train.truncation_sample=0",
                "--gin.train.evaluate_before=False")  # the decoder test covers "before"
  assert result.returncode == 0, result.stderr[-3000:]
  assert "train.model = @T5Config()" in (model_dir / "config.gin").read_text()
  logged = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged if "loss" in m] == [1, 2]
  after = json.loads((model_dir / "eval" / "heldout.json").read_text())["after"]
  assert "default_same_word_zs_opt/accuracy" in after and "seen_mean/accuracy" in after


def test_unknown_mixture_names_the_closest_registered_ones(tmp_path):
  result = _run("--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={tmp_path}",
                "--gin.MIXTURE_OR_TASK_NAME=default_trian")
  _assert_clean_error(result, "'default_trian'", "default_train")


def test_missing_gin_file(tmp_path):
  result = _run("--gin_file=gin/no_such_config.gin")
  _assert_clean_error(result, "no_such_config.gin", "not found")


def test_bad_binding(tmp_path):
  result = _run("--gin_file=gin/quickstart.gin", "--gin.train.no_such_argument=3")
  _assert_clean_error(result, "no_such_argument")


def test_unwritable_model_dir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  # A path below a regular file can never be created, even by root.
  result = _run("--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={blocker}/run")
  _assert_clean_error(result, "MODEL_DIR", "not writable")


SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="needs ../shared/data")
def test_leave_one_cluster_out_run_on_the_real_library(tmp_path):
  model_dir = tmp_path / "run"
  result = _run("--gin_file=gin/flan_heldout_nli.gin", f"--gin.DATA_DIR={SHARED_DATA}",
                f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=2",
                # A small training collection keeps the test quick; the full loo_nli_train
                # reads every file of the library to compute its rates.
                "--gin.MIXTURE_OR_TASK_NAME=cot_collection",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 32}",
                "--gin.train.evaluate_before=False", "--gin.DecoderConfig.num_layers=1",
                "--gin.DecoderConfig.embed_dim=32", "--gin.EvalConfig.max_examples_per_task=1",
                "--gin.EvalConfig.batch_size=1", "--gin.train.truncation_sample=0")
  assert result.returncode == 0, result.stderr[-3000:]
  after = json.loads((model_dir / "eval" / "heldout.json").read_text())["after"]
  assert "rte_zs_opt/accuracy" in after and "heldout_mean/accuracy" in after
  assert all(k.startswith(("rte", "cb_", "anli", "heldout_", "cluster_nli_")) for k in after)
  assert "heldout_fs_opt_mean/accuracy" in after  # the per-variant breakdown
  assert not any("_inverted/" in k for k in after)  # not scorable against labels


def test_a_misspelt_macro_is_an_error_not_a_silently_ignored_setting(tmp_path):
  result = _run("--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={tmp_path}",
                "--gin.TRAIN_STEPZ=5")
  _assert_clean_error(result, "TRAIN_STEPZ", "did you mean TRAIN_STEPS")
  assert not (tmp_path / "checkpoints").exists()  # nothing ran


def test_a_binding_of_a_configurable_nothing_builds_is_an_error(tmp_path):
  # The decoder quickstart builds no T5Config: this setting would be silently ignored.
  result = _run("--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={tmp_path}",
                "--gin.T5Config.embed_dim=32")
  _assert_clean_error(result, "nothing uses: T5Config.embed_dim")


def test_bad_step_counts_and_batch_sizes_are_one_clear_error():
  from types import SimpleNamespace
  from flan_jax.errors import UserError
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training.trainer import TrainerConfig
  for bad in (dict(train_steps=0), dict(train_steps=-1), dict(train_steps=5, checkpoint_every=0),
              dict(train_steps=5, log_every=0), dict(train_steps=5, eval_every=-1)):
    with pytest.raises(UserError, match="must be"):
      TrainerConfig(**bad)
  mesh = SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 1})
  mesh_lib.check_batch_fits(mesh, 8)
  with pytest.raises(UserError, match="BATCH_SIZE=6 .* 4 devices .* use a multiple of 4"):
    mesh_lib.check_batch_fits(mesh, 6)


def _train_in_process(model_dir, *bindings):
  """`python -m flan_jax.train --gin_file=quickstart.gin` with these bindings, run in this
  process (no interpreter start-up), small enough to end in seconds if nothing refuses it."""
  import gin
  from flan_jax import gin_utils, train
  quick = ["TRAIN_STEPS = 1", "BATCH_SIZE = 4", "train.evaluate_before = False",
           "train.truncation_sample = 0", "EvalConfig.max_examples_per_task = 1",
           "EvalConfig.batch_size = 1", "DecoderConfig.num_layers = 1",
           "DecoderConfig.embed_dim = 32"]
  gin.clear_config()
  try:
    gin_utils.parse(["quickstart.gin"], [f"MODEL_DIR = '{model_dir}'", *quick, *bindings])
    return train.train()
  finally:
    gin.clear_config()


def test_a_refused_run_writes_nothing_into_the_model_dir(tmp_path):
  from flan_jax.errors import UserError
  from flan_jax.models import convert
  from flan_jax.models.decoder import DecoderConfig
  from flan_jax.training.run_lock import RunLock
  live = "TRAIN_STEPS = 1  # the live run's settings\n"
  (tmp_path / "config.gin").write_text(live)
  # The same command with another model and seed while the first run holds MODEL_DIR.
  with RunLock(str(tmp_path)):
    with pytest.raises(UserError, match="in use by process"):
      _train_in_process(tmp_path, "DecoderConfig.num_layers = 2", "train.seed = 5")
  assert (tmp_path / "config.gin").read_text() == live
  # A resume with another model than the checkpoints hold.
  (tmp_path / "checkpoints").mkdir()
  recorded = DecoderConfig(vocab_size=259, num_layers=3, embed_dim=32)
  convert.save_run_config(str(tmp_path), recorded)
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  with pytest.raises(UserError, match=r"another model: num_layers=3 \(now 1\)"):
    _train_in_process(tmp_path)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("binding, message", [
    ("TRAIN_STEPS = 'abc'", "train_steps must be a whole number of at least 1, got 'abc'"),
    ("TASK_FEATURE_LENGTHS = {'inputs': -5, 'targets': 32}",
     r"TASK_FEATURE_LENGTHS\['inputs'\] must be a whole number of at least 0, got -5"),
    ("BATCH_SIZE = 0", "BATCH_SIZE must be a whole number of at least 1, got 0"),
])
def test_bad_settings_are_one_clear_error_before_anything_is_written(tmp_path, binding, message):
  from flan_jax.errors import UserError
  with pytest.raises(UserError, match=message):
    _train_in_process(tmp_path / "run", binding)
  assert not (tmp_path / "run" / "config.gin").exists()

"""`python -m flan_jax.eval` scores a run's checkpoint exactly as the run scored itself."""

import json
import pathlib
import subprocess
import sys

import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax import checkpoint_eval, finetune
from flan_jax.errors import UserError
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.models.decoder import DecoderConfig
from flan_jax.training.trainer import TrainerConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
LENGTHS = {"inputs": 64, "targets": 16}
EVALUATION = EvalConfig(max_examples_per_task=6, batch_size=8, evaluate_seen=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  results = finetune.finetune(
      model_dir=str(model_dir), mixture_or_task_name="default_add", task_feature_lengths=LENGTHS,
      batch_size=4, trainer=TrainerConfig(train_steps=3, checkpoint_every=2, progress_bar=False),
      model=DecoderConfig(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16,
                          mlp_dim=64),
      heldout_mixture_or_task_name="default_same_word", evaluation=EVALUATION,
      evaluate_before=False, truncation_sample=0)
  return model_dir, results


def test_the_cli_reproduces_the_runs_own_final_evaluation(run, tmp_path):
  model_dir, results = run
  out = tmp_path / "out"
  completed = subprocess.run(
      [sys.executable, "-m", "flan_jax.eval", "--gin_file=gin/eval.gin",
       f"--gin.CHECKPOINT_PATH={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=default_same_word",
       f"--gin.OUTPUT_DIR={out}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
       "--gin.EvalConfig.max_examples_per_task=6", "--gin.EvalConfig.batch_size=8",
       "--gin.EvalConfig.length_normalize=False"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  report = json.loads((out / "eval" / "default_same_word.json").read_text())
  per_task = {k: v for k, v in report["results"].items() if "_mean/" not in k}
  after = {k: v for k, v in results["after"].items() if "_mean/" not in k}
  assert per_task == after and len(per_task) >= 8  # 4 evaluated variants x (accuracy, baseline)
  assert report["results"]["all_mean/accuracy"] == results["after"]["heldout_mean/accuracy"]
  assert report["groups"]["cluster_comparison"] == ["default_same_word_zs_opt"]
  assert (out / "eval" / "default_same_word.png").read_bytes()[:4] == b"\x89PNG"
  assert "all_mean" in completed.stdout


def test_an_earlier_step_and_bad_paths(run, tmp_path):
  model_dir, _ = run
  report = checkpoint_eval.evaluate_checkpoint(
      str(model_dir), "default_same_word_zs_opt", LENGTHS, str(tmp_path), step=2,
      evaluation=EVALUATION)
  assert set(report["results"]) >= {"default_same_word_zs_opt/accuracy", "all_mean/accuracy"}
  with pytest.raises(UserError, match="not a directory"):
    checkpoint_eval.load_checkpoint(str(tmp_path / "missing"))
  with pytest.raises(UserError, match="needs a run directory"):
    checkpoint_eval.load_checkpoint(str(tmp_path), step=2)

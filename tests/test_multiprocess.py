"""Two processes joined by jax.distributed train one model, checkpoint it and evaluate it
together; their evaluation (rows split over the processes) equals one process's."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_local_processes_train_checkpoint_and_evaluate(tmp_path):
  model_dir, logs = tmp_path / "run", tmp_path / "logs"
  args = ["--gin_file=gin/quickstart.gin", "--gin.TRAIN_STEPS=4", "--gin.train.checkpoint_every=2",
          "--gin.train.log_every=1", "--gin.train.evaluate_before=False",
          "--gin.DecoderConfig.num_layers=1", "--gin.DecoderConfig.embed_dim=32",
          "--gin.EvalConfig.max_examples_per_task=2", "--gin.EvalConfig.batch_size=2",
          "--gin.train.truncation_sample=0", "--gin.EvalConfig.evaluate_seen=False"]
  result = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "-n", "2", "-p", str(_free_port()),
       "-l", str(logs), *args, f"--gin.MODEL_DIR={model_dir}",
       # the hosts joined over DCN: jax's hybrid mesh, one host per data-axis slot
       "--gin.train.dcn_mesh_shape=(2, 1, 1)"],
      cwd=REPO, env=dict(os.environ, PYTHON=sys.executable,
                                       JAX_ENABLE_COMPILATION_CACHE="false"), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  # One process with the same arguments trains on the same global batches: same losses.
  alone_dir = tmp_path / "alone_run"
  alone = subprocess.run([sys.executable, "-m", "flan_jax.train", *args,
                          f"--gin.MODEL_DIR={alone_dir}", "--gin.HELDOUT_MIXTURE_OR_TASK_NAME=None"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
  assert alone.returncode == 0, alone.stderr[-3000:]
  losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()
                      if "loss" in json.loads(l)]
  np.testing.assert_allclose(losses(model_dir), losses(alone_dir), rtol=0, atol=1e-5)
  assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]
  logged = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  # one writer, not one per process: the loss every step, the evaluation after
  assert [m["step"] for m in logged if "loss" in m] == [1, 2, 3, 4]
  assert [m["step"] for m in logged if "eval/heldout_mean/accuracy" in m] == [4]
  after = json.loads((model_dir / "eval" / "heldout.json").read_text())["after"]
  # One process evaluates the same checkpoint alone: the same scores, task by task.
  import flan_jax_tasks.default_mixture  # noqa: F401
  from flan_jax import checkpoint_eval
  from flan_jax.evaluation.evaluator import EvalConfig
  alone = checkpoint_eval.evaluate_checkpoint(
      str(model_dir), "default_heldout", {"inputs": 96, "targets": 32}, str(tmp_path / "alone"),
      evaluation=EvalConfig(max_examples_per_task=2, batch_size=2, evaluate_seen=False,
                            length_normalize=True))["results"]
  per_task = {k: v for k, v in after.items() if "_mean/" not in k}
  assert per_task and per_task == {k: v for k, v in alone.items() if "_mean/" not in k}

"""Two processes joined by jax.distributed train one model and checkpoint it together."""

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_local_processes_train_checkpoint_and_evaluate(tmp_path):
  model_dir, logs = tmp_path / "run", tmp_path / "logs"
  result = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "-n", "2", "-p", str(_free_port()),
       "-l", str(logs), "--gin_file=gin/quickstart.gin", f"--gin.MODEL_DIR={model_dir}",
       "--gin.TRAIN_STEPS=4", "--gin.train.checkpoint_every=2", "--gin.train.log_every=1",
       "--gin.train.evaluate_before=False", "--gin.DecoderConfig.num_layers=1",
       "--gin.DecoderConfig.embed_dim=32", "--gin.EvalConfig.max_examples_per_task=2",
       "--gin.EvalConfig.batch_size=2", "--gin.train.truncation_sample=0",
       "--gin.EvalConfig.evaluate_seen=False"],
      cwd=REPO, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4"]
  logged = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged] == [1, 2, 3, 4]  # one writer, not one per process
  assert "after" in json.loads((model_dir / "eval" / "heldout.json").read_text())

"""A LoRA run over two processes, its base and adapters sharded across them (FSDP over the
hosts), trains as one process does and records the same base."""

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


def test_two_processes_train_lora_adapters_as_one_does(tmp_path):
  args = ["--gin_file=gin/quickstart.gin", "--gin.TRAIN_STEPS=3", "--gin.train.log_every=1",
          "--gin.train.evaluate_before=False", "--gin.HELDOUT_MIXTURE_OR_TASK_NAME=None",
          "--gin.EvalConfig.evaluate_seen=False", "--gin.DecoderConfig.num_layers=1",
          "--gin.DecoderConfig.embed_dim=32", "--gin.train.truncation_sample=0",
          "--gin.train.lora=@LoraConfig()", "--gin.LoraConfig.target_modules=['all-linear']"]
  env = dict(os.environ, PYTHON=sys.executable, JAX_ENABLE_COMPILATION_CACHE="false",
             JAX_PLATFORMS="cpu")
  pair, alone = tmp_path / "pair", tmp_path / "alone"
  # Side by side: both spend most of their time starting up and compiling.
  runs = [subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "-n", "2", "-p", str(_free_port()), "-l",
       str(tmp_path / "logs"), *args, f"--gin.MODEL_DIR={pair}",
       # fsdp over the two hosts: each holds half of the base and of the adapters
       "--gin.train.mesh_shape=(1, 1, 1)", "--gin.train.dcn_mesh_shape=(1, 2, 1)"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
      subprocess.Popen([sys.executable, "-m", "flan_jax.train", *args, f"--gin.MODEL_DIR={alone}"],
                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)]
  for run in runs:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
  losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()
                      if "loss" in json.loads(l)]
  assert len(losses(pair)) == 3
  np.testing.assert_allclose(losses(pair), losses(alone), rtol=0, atol=1e-5)
  # The base's fingerprint does not depend on how it is spread over devices and hosts.
  record = lambda d: json.loads((d / "lora_base.json").read_text())
  assert record(pair) == record(alone)

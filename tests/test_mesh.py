"""Training on a data x fsdp x tensor mesh of 4 (simulated) devices."""

import json
import os
import subprocess
import sys

import pytest

from tiny import simulated_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
import jax
import flan_jax_tasks.default_mixture
from flan_jax.data.pipeline import train_batches
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.t5 import T5Config
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

config = TrainerConfig(train_steps=4, log_every=1, mesh_shape=(1, 2, 2), progress_bar=False)
t5 = sys.argv[2] == "t5"
# T5 with scanned layers: its stacked parameters gain a replicated leading "layers" axis.
model = (EncoderDecoder(T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8,
                                 mlp_dim=64, scan_layers=True))
         if t5 else DecoderOnly(TINY_DECODER))
batches = lambda start: train_batches("default_add", {"inputs": 64, "targets": 16}, 8,
                                      seed=0, skip_batches=start, encoder_decoder=t5)
state = train(model, OptimizerConfig(warmup_steps=1), config, batches,
              sys.argv[1], {"inputs": 64, "targets": 16})
gate = (state.params["decoder"]["layers"] if t5 else state.params["layers_0"])["mlp"]["gate"]
print(json.dumps({
    "devices": jax.device_count(),
    "embedding": str(tuple(state.params["embedding"].sharding.spec)),
    "gate": str(tuple(gate["kernel"].sharding.spec)),
    "shards": len(state.params["embedding"].addressable_shards),
}))
"""


@pytest.mark.parametrize("family", ["t5"])  # the decoder: in the same-steps test below
def test_parameters_shard_over_fsdp_and_tensor_axes_and_training_runs(family, tmp_path):
  env = simulated_devices_env(4)
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), family], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 4
  assert report["embedding"] == "('tensor', 'fsdp')"  # vocab padded to divide evenly
  assert report["gate"] == ("(None, 'fsdp', 'tensor')" if family == "t5" else "('fsdp', 'tensor')")
  assert report["shards"] == 4
  losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 4 and losses[-1] < losses[0]


SAME_STEPS = """
import json, sys
sys.path.insert(0, "tests")
import flan_jax_tasks.default_mixture
from flan_jax.data.pipeline import train_batches
from flan_jax.models.families import DecoderOnly
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

losses, layout = {}, {}
for shape in ((4, 1, 1), (1, 2, 2)):
  directory = f"{sys.argv[1]}/{shape[0]}{shape[1]}{shape[2]}"
  config = TrainerConfig(train_steps=3, log_every=1, mesh_shape=shape, progress_bar=False)
  batches = lambda start, state=None: train_batches(
      "default_add", {"inputs": 64, "targets": 16}, 8, seed=0, skip_batches=start, state=state)
  state = train(DecoderOnly(TINY_DECODER), OptimizerConfig(warmup_steps=1), config, batches,
                directory, {"inputs": 64, "targets": 16})
  losses[str(shape)] = [json.loads(l)["loss"] for l in open(f"{directory}/metrics.jsonl")]
# The decoder's parameters on the (1, 2, 2) mesh: fsdp x tensor.
gate = state.params["layers_0"]["mlp"]["gate"]["kernel"]
layout = {"embedding": str(tuple(state.params["embedding"].sharding.spec)),
          "gate": str(tuple(gate.sharding.spec)),
          "shards": len(state.params["embedding"].addressable_shards)}
print(json.dumps({"losses": losses, "layout": layout}))
"""


def test_data_parallel_and_fsdp_tensor_meshes_take_the_same_steps(tmp_path):
  env = simulated_devices_env(4)
  result = subprocess.run([sys.executable, "-c", SAME_STEPS, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  data_parallel, sharded = report["losses"]["(4, 1, 1)"], report["losses"]["(1, 2, 2)"]
  assert len(data_parallel) == 3 and sharded[-1] < sharded[0]
  for a, b in zip(data_parallel, sharded):
    assert abs(a - b) < 1e-5
  assert report["layout"] == {"embedding": "('tensor', 'fsdp')", "gate": "('fsdp', 'tensor')",
                              "shards": 4}

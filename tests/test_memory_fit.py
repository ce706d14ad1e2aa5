"""benchmarks/memory_fit.py counts per-device memory right, and the 8 x 80 GB gin configs
are what it measured."""

import importlib.util
import json
import os
import subprocess
import sys

import gin
import jax
import flax.linen as nn
import pytest

import flan_jax.train  # noqa: F401  (registers DecoderConfig and train with gin)
from flan_jax.gin_utils import GIN_DIR
from flan_jax.models.decoder import Decoder, DecoderConfig
from flan_jax.training import spikes
from tiny import dummy_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "memory_fit", os.path.join(REPO, "benchmarks", "memory_fit.py"))
memory_fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_fit)  # imports no jax at module level: safe here

BATCH_FEATURES = 6  # the int32 [batch, length] features of a decoder-only training batch
SPIKE_WINDOW_BYTES = len(spikes.WATCHED) * spikes.WINDOW * 4  # float32, on every device


def _measure(*runs: list[str]) -> list[dict]:
  """memory_fit.measure for each argument list, in one subprocess with 4 simulated CPU
  devices (XLA reads the device count once, before this process's jax started)."""
  code = ("import json, sys; from benchmarks import memory_fit as m; "
          "m.use_simulated_devices(4); "
          "print(json.dumps([m.measure(m.parse_args(a)) for a in json.loads(sys.argv[1])]))")
  done = subprocess.run([sys.executable, "-c", code, json.dumps(runs)], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_argument_bytes_are_the_state_and_batch_shards_counted_by_hand():
  batch, length = 8, 64
  common = ["--model=tiny", "--devices=4", f"--batch={batch}", f"--length={length}"]
  fsdp2, fsdp4 = _measure(common + ["--mesh=2,2,1"], common + ["--mesh=1,4,1"])

  config = DecoderConfig(**memory_fit.MODELS["tiny"], scan_layers=True)
  boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), *dummy_inputs(length)))
  count = sum(x.size for x in jax.tree.leaves(boxed))
  # Every parameter of the decoder has exactly one "embed" axis, which the mesh rules put
  # on fsdp (and tiny's embed_dim divides by it); with tensor = 1 nothing else is split,
  # so each device holds 1/fsdp of every parameter and of both AdamW moments.
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert all(list(spec).count("embed") == 1 for spec in specs), specs
  assert config.embed_dim % 4 == 0

  for result, (data, fsdp) in ((fsdp2, (2, 2)), (fsdp4, (1, 4))):
    assert result["parameters"] == count
    state = 3 * 4 * count // fsdp + SPIKE_WINDOW_BYTES  # float32 parameters, mu and nu
    rows = batch // (data * fsdp)
    expected = state + BATCH_FEATURES * rows * length * 4
    # Beyond that only int32 scalars: the step, AdamW's count, the spike window's counts.
    assert 0 <= result["argument_bytes"] - expected <= 64, (result, expected)
    # The donated state comes back as the new state, in the same buffers.
    assert result["alias_bytes"] == result["state_bytes_per_device"]
    assert result["per_device_peak_bytes"] == (
        result["argument_bytes"] + result["temp_bytes"] + result["output_bytes"]
        - result["alias_bytes"])

  # Twice the fsdp degree: half the state per device (the same rows per device).
  assert fsdp4["argument_bytes"] < fsdp2["argument_bytes"]
  halved = (fsdp2["state_bytes_per_device"] - SPIKE_WINDOW_BYTES) / 2 + SPIKE_WINDOW_BYTES
  assert fsdp4["state_bytes_per_device"] == pytest.approx(halved, abs=64)


def _gin_settings(path: str) -> tuple[dict, dict]:
  gin.clear_config()
  try:
    gin.add_config_file_search_path(GIN_DIR)
    gin.parse_config_file(path)
    fields = {f: gin.query_parameter(f"DecoderConfig.{f}")
              for f in DecoderConfig.__dataclass_fields__
              if f"DecoderConfig.{f}" in gin.config_str()}
    train = {"mesh": gin.query_parameter("train.mesh_shape"),
             "batch": gin.query_parameter("%BATCH_SIZE"),
             "lengths": gin.query_parameter("%TASK_FEATURE_LENGTHS"),
             "microbatches": gin.query_parameter("train.microbatches")}
  finally:
    gin.clear_config()
  return fields, train


@pytest.mark.parametrize("name", ["llama3_8b", "llama2_7b"])
def test_8x80gb_gin_is_what_memory_fit_measured(name):
  path = os.path.join(GIN_DIR, "models", f"{name}_8x80gb.gin")
  fields, train = _gin_settings(path)
  # The benchmark's table repeats the model file the config includes.
  node = {"scan_layers": True, "remat_policy": fields["remat_policy"],
          "attention_implementation": "cudnn"}
  assert fields == {**memory_fit.MODELS[name], **node}
  assert train["mesh"] == (1, 8, 1)

  # The command in the file's comment measured exactly these settings ...
  with open(path) as f:
    text = f.read()
  command = [line for line in text.splitlines() if "python -m benchmarks.memory_fit" in line]
  assert len(command) == 1, command
  args = memory_fit.parse_args(command[0].split("memory_fit", 1)[1].split())
  assert (args.model, args.devices, args.mesh) == (name, 8, "1,8,1")
  assert (args.batch, args.length) == (train["batch"], sum(train["lengths"].values()))
  assert (args.remat, args.scan) == (fields["remat_policy"], fields["scan_layers"])
  assert (args.microbatches, args.optimizer) == (train["microbatches"], "adamw")

  # ... and its recorded result fits and is the number the comment quotes.
  with open(os.path.join(REPO, "benchmarks", "results", f"memory_fit_{name}.json")) as f:
    runs = json.load(f)["runs"]
  wanted = {"devices": 8, "mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "batch": args.batch,
            "length": args.length, "remat": args.remat, "scan": args.scan,
            "optimizer": "adamw", "microbatches": args.microbatches, "attention": "xla"}
  matching = [r for r in runs if all(r[k] == v for k, v in wanted.items())]
  assert len(matching) == 1, wanted
  assert matching[0]["fits_80gb"]
  assert f"{matching[0]['per_device_peak_gib']:.2f} GiB per GPU" in text

"""LoRA's benchmarks measure what they say: the throughput run trains the same adapters
as transformers + PEFT (same trainable count, same losses) and times full finetuning
beside it; the footprint is read from the real train state and agrees with PEFT's and
torch AdamW's; memory_fit's LoRA state holds a bf16 base without optimizer state."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


train_throughput = _load("train_throughput")
memory_fit = _load("memory_fit")  # imports no jax at module level: safe here

# benchmarks/train_throughput.py's "tiny": E 64, 4 heads and 2 kv heads of 16, 2 layers.
TINY_QV_ADAPTERS = lambda rank: 2 * rank * ((64 + 64) + (64 + 32))  # query, value a layer


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """LoRA rank 4 on q, v against PEFT, and full finetuning of both: 1 round x 1 step."""
  output = tmp_path_factory.mktemp("tt_lora") / "result.json"
  args = train_throughput.parse_args([
      "--model=tiny", "--batch=2", "--length=32", "--steps=1", "--rounds=1",
      "--peak_size=128", "--device=cpu", "--lora_rank=4", f"--output={output}"])
  return train_throughput.run(args)


def test_lora_throughput_trains_what_peft_trains(lora_run):
  result, line = lora_run
  assert result["trainable_parameters"] == {"flan_jax": TINY_QV_ADAPTERS(4),
                                            "torch": TINY_QV_ADAPTERS(4)}
  assert result["lora"]["peft_targets"] == ["q_proj", "v_proj"]
  assert result["parameters"] == result["hf_parameters"]
  full = result["full_finetuning"]
  assert full["trainable_parameters"]["flan_jax"] == full["trainable_parameters"]["torch"]
  assert full["trainable_parameters"]["flan_jax"] + TINY_QV_ADAPTERS(4) == result["parameters"]
  # B = 0: both start from the base model, whose loss full finetuning starts from too.
  first = result["first_loss"]
  assert first["flan_jax"] == pytest.approx(first["torch"], abs=1e-4)
  assert first["flan_jax"] == pytest.approx(full["first_loss"]["flan_jax"], abs=1e-6)
  # One AdamW update of the adapters alone, the same on both sides; full finetuning's
  # update of every weight moves the loss further.
  second = result["second_loss"]
  assert second["flan_jax"] == pytest.approx(second["torch"], abs=1e-4)
  assert second["flan_jax_full"] == pytest.approx(second["torch_full"], abs=1e-4)
  assert second["flan_jax_full"] < second["flan_jax"] < first["flan_jax"]
  # A LoRA step is counted at fewer FLOPs than a full one (4 per frozen base weight).
  assert result["flops_per_token"] < full["flops_per_token"]
  match = re.fullmatch(r"lora_speedup_vs_full=(\d+\.\d\d) ratio_vs_hf=(\d+\.\d\d) "
                       r"mfu=(\d+\.\d\d)", line)
  assert match, line
  assert set(result["step_s"]) == {"flan_jax", "torch", "flan_jax_full", "torch_full"}
  json.dumps(result)


def test_t5_lora_throughput_trains_what_peft_trains(tmp_path):
  """T5 too: PEFT's own names for every linear layer (q, k, v, o, wi_0, wi_1, wo)."""
  args = train_throughput.parse_args([
      "--model=t5_tiny", "--batch=2", "--length=16", "--targets_length=8", "--steps=1",
      "--rounds=1", "--peak_size=128", "--device=cpu", "--lora_rank=2",
      "--lora_targets=all-linear", f"--output={tmp_path / 'result.json'}"])
  result, _ = train_throughput.run(args)
  assert result["lora"]["peft_targets"] == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
  # t5_tiny: E 64, 4 heads of 16, MLP 128; 2 encoder layers (attention, MLP), 2 decoder
  # layers (self- and cross-attention, MLP); rank * (in + out) each.
  attention, mlp = 4 * 2 * (64 + 64), 3 * 2 * (64 + 128)
  adapters = 2 * (attention + mlp) + 2 * (2 * attention + mlp)
  assert result["trainable_parameters"] == {"flan_jax": adapters, "torch": adapters}
  assert result["first_loss"]["flan_jax"] == pytest.approx(result["first_loss"]["torch"], abs=1e-4)
  second = result["second_loss"]
  assert second["flan_jax"] == pytest.approx(second["torch"], abs=1e-4)
  assert second["flan_jax"] < result["first_loss"]["flan_jax"]


def test_bad_lora_settings_are_one_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_throughput.parse_args(["--model=tiny", "--lora_rank=4", "--lora_targets=q,qq"])
  assert exit_info.value.code == 2
  assert "'qq' is not a projection" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    train_throughput.parse_args(["--model=tiny", "--lora_rank=-1"])
  # The DPO benchmark's stories260K is checked the same way, before anything loads.
  with pytest.raises(SystemExit) as exit_info:
    train_throughput.parse_args(["--model=stories260K", "--objective=dpo", "--lora_rank=8",
                                 "--lora_targets=q,qq"])
  assert exit_info.value.code == 2
  assert "'qq' is not a projection" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_footprint_of_stories260K_from_the_train_state_and_peft():
  lora_footprint = _load("lora_footprint")
  args = lora_footprint.parse_args(["--model=stories260K", "--lora_rank=8",
                                    "--lora_targets=all-linear", "--length=64"])
  result, line = lora_footprint.run(args)
  full, lora = result["flan_jax"]["full"], result["flan_jax"]["lora"]
  peer = result["transformers_peft"]
  # stories260K: 5 layers, E 64, 8 heads and 4 kv heads of 8, MLP 172, tied output.
  per_layer = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 172) + (172 + 64))
  assert lora["trainable_parameters"] == 5 * per_layer == peer["lora"]["trainable_parameters"]
  assert full["trainable_parameters"] == 260032 == peer["full"]["trainable_parameters"]
  assert lora["frozen_parameters"] == full["parameters"]
  # float32 everywhere; AdamW's two moments per trained value, plus its step count.
  parts = lora["state_bytes_by_part"]
  assert parts["params"] == 4 * lora["trainable_parameters"]
  assert 0 <= parts["opt_state"] - 8 * lora["trainable_parameters"] <= 16
  assert parts["frozen"] == 4 * full["parameters"]
  assert 0 <= full["state_bytes_by_part"]["opt_state"] - 8 * full["parameters"] <= 16
  # The same moments in torch's AdamW (which adds a float32 step per tensor).
  assert peer["lora"]["optimizer_state_bytes"] >= parts["opt_state"] - 16
  assert peer["lora"]["optimizer_state_bytes"] - parts["opt_state"] < 4 * 200
  assert peer["lora"]["gradient_bytes"] == parts["params"]
  assert lora["checkpointed_bytes"] == lora["state_bytes"] - parts["frozen"]
  assert lora["state_bytes"] < full["state_bytes"]
  assert line.startswith("trainable_fraction=")


def test_memory_fit_lora_state_is_adapters_moments_and_a_bf16_base(tmp_path):
  """Tiny model on one simulated device: full finetuning, and LoRA rank 16 on every
  projection with a bf16 base, in one subprocess (XLA reads its flags once)."""
  common = ["--model=tiny", "--devices=1", "--mesh=1,1,1", "--batch=1", "--length=32",
            f"--output={tmp_path / 'fit.json'}"]
  code = ("import json, sys; from benchmarks import memory_fit as m; "
          "runs = [m.parse_args(a) for a in json.loads(sys.argv[1])]; "
          "m.use_simulated_devices(1, tuple(m.xla_flags(runs[1]))); "
          "print(json.dumps([m.measure(r) for r in runs]))")
  done = subprocess.run(
      [sys.executable, "-c", code, json.dumps([common, common + ["--lora_rank=16"]])],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  full, lora = json.loads(done.stdout.strip().splitlines()[-1])

  # tiny: E 64, 4 heads and 2 kv heads of 16, MLP 128, 2 layers; rank * (in + out) each.
  adapters = 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))
  assert lora["trainable_parameters"] == adapters
  assert lora["parameters"] == full["parameters"] + adapters
  assert lora["param_dtype"] == "bfloat16" and not lora["hoisting"]
  assert memory_fit.NO_HOISTING in lora["xla_flags"]
  parts, full_parts = lora["state_bytes_by_part_per_device"], full["state_bytes_by_part_per_device"]
  assert parts["params"] == 4 * adapters  # float32 adapters
  assert 0 <= parts["opt_state"] - 8 * adapters <= 16  # their two AdamW moments only
  assert parts["frozen"] == 2 * full["parameters"]  # the base, once, in bf16
  assert full_parts["frozen"] == 0 and full_parts["params"] == 4 * full["parameters"]
  assert lora["state_bytes_per_device"] < full["state_bytes_per_device"] / 2
  # No gradient of the base among the temporaries: full finetuning's hold a float32
  # gradient of every weight, LoRA's of the adapters only, and the rest is alike.
  assert lora["temp_bytes"] <= full["temp_bytes"] - 4 * (full["parameters"] - adapters)

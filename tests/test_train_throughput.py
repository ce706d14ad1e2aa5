"""benchmarks/train_throughput.py trains equal models on equal batches: flan_jax and
transformers hold the same parameter count, start from the same weights (same first
loss) and take the same AdamW step (same second loss), and the report ends in the
documented `ratio_vs_hf=X.XX mfu=Y.YY` line."""

import importlib.util
import json
import os
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "train_throughput", os.path.join(REPO, "benchmarks", "train_throughput.py"))
train_throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_throughput)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny benchmark run (2 rounds x 2 steps, 2 rows of 64 tokens): ~15 s on 2 cores."""
  output = tmp_path_factory.mktemp("tt") / "result.json"
  args = train_throughput.parse_args([
      "--model=tiny", "--batch=2", "--length=64", "--steps=2", "--rounds=2",
      "--peak_size=256", "--device=cpu", f"--output={output}"])
  result, line = train_throughput.run(args)
  return result, line


def test_parameter_counts_match(tiny_run):
  result, _ = tiny_run
  assert result["parameters"] == result["hf_parameters"] > 0
  assert 0 < result["matmul_parameters"] < result["parameters"]


def test_final_line_format(tiny_run):
  result, line = tiny_run
  match = re.fullmatch(r"ratio_vs_hf=(\d+\.\d\d) mfu=(\d+\.\d\d)", line)
  assert match, line
  assert float(match.group(1)) > 0
  # Two decimals may round a tiny model's MFU to 0.00; the unrounded value is positive.
  assert result["mfu"]["flan_jax"] > 0 and result["mfu"]["torch"] > 0
  assert result["flan_jax_tokens_per_s"] > 0 and result["torch_tokens_per_s"] > 0
  assert result["tokens_per_step"] == 2 * 63
  json.dumps(result)  # what main writes


def test_same_weights_same_loss_same_update(tiny_run):
  """Step 1 from the copied weights gives one loss; step 2, after one AdamW update with
  the same clipping, decay mask and hyper-parameters on both sides, gives one loss too."""
  result, _ = tiny_run
  first, second = result["first_loss"], result["second_loss"]
  assert first["flan_jax"] == pytest.approx(first["torch"], abs=1e-4)
  assert second["flan_jax"] == pytest.approx(second["torch"], abs=1e-4)
  assert second["flan_jax"] < first["flan_jax"]  # the update did something


def test_synthetic_batch_predicts_next_token():
  batch, ids = train_throughput.synthetic_batch(2, 8, 50, seed=3)
  assert (batch["decoder_input_tokens"] == ids).all()
  assert (batch["decoder_target_tokens"][:, :-1] == ids[:, 1:]).all()
  assert batch["decoder_loss_weights"].sum() == 2 * 7  # what transformers' shifted loss counts
  assert (batch["decoder_segment_ids"] == 1).all()
  assert (batch["decoder_positions"][1] == range(8)).all()


@pytest.fixture(scope="module")
def t5_tiny_run(tmp_path_factory):
  """One tiny T5 run (1 round x 1 step, 2 rows of 32 inputs and 16 targets)."""
  output = tmp_path_factory.mktemp("tt_t5") / "result.json"
  args = train_throughput.parse_args([
      "--model=t5_tiny", "--batch=2", "--length=32", "--targets_length=16", "--steps=1",
      "--rounds=1", "--peak_size=256", "--device=cpu", f"--output={output}"])
  return train_throughput.run(args)


def test_t5_same_parameters_same_losses(t5_tiny_run):
  """T5 exported through hf_t5 to T5ForConditionalGeneration: the same parameters, the
  same first loss, the same loss after one identical AdamW update."""
  result, line = t5_tiny_run
  assert result["parameters"] == result["hf_parameters"] > 0
  # 2 encoder layers of q, k, v, o (64 x 64) and a gated MLP (3 x 64 x 128), plus the
  # decoder's cross-attention keys and values: the weights that read the inputs.
  assert result["matmul_parameters_by_stack"]["encoder"] == 2 * (6 * 64 * 64 + 3 * 64 * 128)
  first, second = result["first_loss"], result["second_loss"]
  assert first["flan_jax"] == pytest.approx(first["torch"], abs=1e-4)
  assert second["flan_jax"] == pytest.approx(second["torch"], abs=1e-4)
  assert second["flan_jax"] < first["flan_jax"]
  assert re.fullmatch(r"ratio_vs_hf=(\d+\.\d\d) mfu=(\d+\.\d\d)", line), line
  assert result["tokens_per_step"] == 2 * (32 + 16)  # encoder + decoder tokens
  assert result["flan_jax_sequences_per_s"] > 0 and result["torch_sequences_per_s"] > 0
  assert result["mfu"]["flan_jax"] > 0


def test_synthetic_t5_batch_shifts_targets_right():
  batch, hf = train_throughput.synthetic_t5_batch(2, 8, 5, 50, seed=3)
  assert (batch["encoder_input_tokens"] == hf["input_ids"]).all()
  assert (batch["decoder_target_tokens"] == hf["labels"]).all()
  assert (batch["decoder_input_tokens"] == hf["decoder_input_ids"]).all()
  assert (hf["decoder_input_ids"][:, 0] == 0).all()  # T5's decoder start token
  assert (hf["decoder_input_ids"][:, 1:] == hf["labels"][:, :-1]).all()
  assert batch["decoder_loss_weights"].sum() == 2 * 5  # every target, as HF's loss counts
  assert (batch["encoder_segment_ids"] == 1).all() and (batch["decoder_segment_ids"] == 1).all()
  assert (batch["encoder_positions"][1] == range(8)).all()

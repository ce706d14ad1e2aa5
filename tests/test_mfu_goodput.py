"""MFU and goodput: model FLOPs against hand counts and the models' own weights, the
devices' peak from the table, and a training run's metrics.jsonl splitting its wall
time into train steps, compilation, data waits, checkpoints and evaluation."""

import dataclasses
import json
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import UserError
from flan_jax.models import flops
from flan_jax.models import lora as lora_lib
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.lora import LoraConfig
from flan_jax.models.t5 import T5Config
from flan_jax.training import mfu
from flan_jax.training.goodput import GoodputClock
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig, _progress, train
from tiny import TINY_DECODER

LENGTHS = {"inputs": 64, "targets": 16}


def test_decoder_flops_per_token_by_hand():
  # vocab 100 pads to 128. Per layer: query and output 8*2*4 each, key and value
  # 8*1*4 each (one kv head), gate, up and down 8*16 each: 576; two layers, plus the
  # tied output layer 8*128: N = 2176.
  config = DecoderConfig(vocab_size=100, num_layers=2, embed_dim=8, num_heads=2,
                         num_kv_heads=1, head_dim=4, mlp_dim=16)
  family = DecoderOnly(config)
  assert family.matmul_weights() == {"decoder": 2176}
  per_token = 6 * 2176 + 12 * 2 * (2 * 4) * 10  # attention over 10 keys
  assert family.flops_per_token({"decoder": 10}) == {"decoder": per_token}
  assert family.flops_per_sequence({"decoder": 10}) == 10 * per_token


def test_t5_flops_per_token_by_hand():
  # Attention 4 * 8*2*4 = 256 a layer, a ReLU MLP 2 * 8*16 = 256. The encoder's tokens
  # pass through its layer and both decoder layers' cross-attention keys and values
  # (2 * 64 each); the decoder's through its self-attention, cross-attention queries
  # and outputs, MLP, and the output layer 8*128.
  config = T5Config(vocab_size=100, embed_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=2, feed_forward="relu")
  family = EncoderDecoder(config)
  assert family.matmul_weights() == {"encoder": 512 + 2 * 128,
                                     "decoder": 2 * (256 + 128 + 256) + 1024}
  lengths = {"encoder": 6, "decoder": 4}
  encoder = 6 * 768 + 12 * 1 * 8 * 6  # attends over the 6 encoder keys
  decoder = 6 * 2304 + 12 * 2 * 8 * (4 + 6)  # over its 4 keys, then the 6 encoded ones
  assert family.flops_per_token(lengths) == {"encoder": encoder, "decoder": decoder}
  assert family.flops_per_sequence(lengths) == 6 * encoder + 4 * decoder


def _counted_matmul_weights(family) -> dict[str, int]:
  """The models' own matmul weights, by the tokens they multiply; a tied output layer
  is the embedding table."""
  params = nn.meta.unbox(jax.eval_shape(lambda: family.init(jax.random.key(0), LENGTHS)))
  counts = {"encoder": 0, "decoder": 0}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params["params"]):
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-1] in ("scale", "relpos_bias") or keys[-1].endswith("_bias"):
      continue
    if keys[-1] == "embedding" and not family.config.tie_embeddings:
      continue
    reads_encoder = keys[0] == "encoder" or ("cross_attention" in keys
                                             and keys[-1] in ("key", "value"))
    counts["encoder" if reads_encoder else "decoder"] += int(np.prod(leaf.shape))
  return {stack: count for stack, count in counts.items() if count}


T5_TINY = T5Config(vocab_size=300, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                   num_encoder_layers=2, num_decoder_layers=3)


@pytest.mark.parametrize("family", [
    DecoderOnly(TINY_DECODER),
    DecoderOnly(dataclasses.replace(TINY_DECODER, tie_embeddings=False, attention_bias=True)),
    EncoderDecoder(T5_TINY),
    EncoderDecoder(dataclasses.replace(T5_TINY, feed_forward="relu", tie_embeddings=True)),
], ids=["decoder", "decoder_untied_bias", "t5", "t5_relu_tied"])
def test_matmul_weights_are_the_models_own(family):
  assert family.matmul_weights() == _counted_matmul_weights(family)


def test_lora_flops_per_token_by_hand():
  """A LoRA step: 4 FLOPs per token for each frozen base weight (forward, and the
  activation gradient only), 6 for each adapter weight, attention as before."""
  config = DecoderConfig(vocab_size=100, num_layers=2, embed_dim=8, num_heads=2,
                         num_kv_heads=1, head_dim=4, mlp_dim=16, tie_embeddings=False,
                         lora=LoraConfig(rank=2, target_modules=("q", "v")))
  family = DecoderOnly(config)
  # Base: the 576 a layer of the test above, twice, plus the untied output layer 8*128.
  assert family.matmul_weights() == {"decoder": 2176}
  # Adapters rank * (in + out): query 2*(8 + 8), value 2*(8 + 4), in each of 2 layers.
  assert flops.adapter_matmul_weights(config) == {"decoder": 2 * (32 + 24)}
  attention = 12 * 2 * (2 * 4) * 10  # over 10 keys, as without LoRA
  per_token = 4 * 2176 + 6 * 112 + attention
  assert family.flops_per_token({"decoder": 10}) == {"decoder": per_token}
  assert per_token < 6 * 2176 + attention  # and less than full finetuning's count

  # Every projection and the output layer: per layer q 32, k 24, v 24, o 32, gate and up
  # 2*(8 + 16) each, down 2*(16 + 8): 256; lm_head 2*(8 + 128).
  every = dataclasses.replace(config, lora=LoraConfig(rank=2, target_modules=(
      "all-linear", "lm_head")))
  assert flops.adapter_matmul_weights(every) == {"decoder": 2 * 256 + 272}
  assert DecoderOnly(every).flops_per_token({"decoder": 10}) == {
      "decoder": 4 * 2176 + 6 * 784 + attention}


def _counted_adapter_weights(family) -> dict[str, int]:
  """The adapter leaves the model creates, by the tokens they multiply."""
  params = nn.meta.unbox(jax.eval_shape(lambda: family.init(jax.random.key(0), LENGTHS)))
  counts = {"encoder": 0, "decoder": 0}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params["params"]):
    keys = [getattr(k, "key", str(k)) for k in path]
    if not lora_lib.is_adapter(tuple(keys)):
      continue
    reads_encoder = keys[0] == "encoder" or ("cross_attention" in keys
                                             and keys[-2] in ("key_lora", "value_lora"))
    counts["encoder" if reads_encoder else "decoder"] += int(np.prod(leaf.shape))
  return {stack: count for stack, count in counts.items()
          if count or stack in flops.adapter_matmul_weights(family.config)}


@pytest.mark.parametrize("family", [
    DecoderOnly(dataclasses.replace(TINY_DECODER, tie_embeddings=False, lora=LoraConfig(
        rank=3, target_modules=("all-linear", "lm_head")))),
    DecoderOnly(dataclasses.replace(TINY_DECODER, lora=LoraConfig(target_modules=("k", "down")))),
    EncoderDecoder(dataclasses.replace(T5_TINY, lora=LoraConfig(
        rank=2, target_modules=("all-linear", "lm_head")))),
    EncoderDecoder(dataclasses.replace(T5_TINY, feed_forward="relu", lora=LoraConfig(
        rank=4, target_modules=("k", "v", "wi")))),
], ids=["decoder_all", "decoder_k_down", "t5_all", "t5_relu_kv_wi"])
def test_adapter_weights_are_the_models_own(family):
  assert flops.adapter_matmul_weights(family.config) == _counted_adapter_weights(family)


def _compiled_step_flops(config, rows: int, length: int) -> float:
  """XLA's own FLOP count of the compiled train step (cost analysis, nothing run)."""
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import train_step as step_lib
  model, lengths = DecoderOnly(config), {"inputs": 0, "targets": length}
  mesh = mesh_lib.make_mesh(devices=[jax.devices("cpu")[0]])
  optimizer = make_optimizer(OptimizerConfig(), total_steps=10)
  shardings = step_lib.state_shardings(model, optimizer, mesh, lengths)
  state = step_lib.abstract_train_state(model, optimizer, shardings, lengths)
  row = jax.ShapeDtypeStruct((rows, length), np.int32, sharding=mesh_lib.batch_sharding(mesh))
  batch = {key: row for key in ("decoder_input_tokens", "decoder_target_tokens",
                                "decoder_loss_weights", "decoder_segment_ids",
                                "decoder_positions", "decoder_causal_attention")}
  step = step_lib.make_train_step(model, optimizer, mesh, shardings)
  with mesh_lib.on_mesh(mesh):
    return step.jitted.lower(state, batch).compile().cost_analysis()["flops"]


def test_lora_step_compiles_to_the_flops_counted_for_it():
  """The compiler's count of the real step agrees with ours: a LoRA step computes no
  weight gradient of the base (were it differentiated, it would cost as much as full
  finetuning's step, plus the adapters)."""
  full = dataclasses.replace(TINY_DECODER, tie_embeddings=False)
  lora = dataclasses.replace(full, lora=LoraConfig(rank=2, target_modules=("q", "v")))
  rows, length = 4, 64
  counted = {name: rows * DecoderOnly(c).flops_per_sequence({"decoder": length})
             for name, c in (("full", full), ("lora", lora))}
  compiled = {name: _compiled_step_flops(c, rows, length)
              for name, c in (("full", full), ("lora", lora))}
  for name in counted:  # XLA also counts elementwise work, the loss and AdamW
    assert counted[name] <= compiled[name] <= 1.15 * counted[name], (name, counted, compiled)
  assert compiled["full"] - compiled["lora"] >= 0.9 * (counted["full"] - counted["lora"])


def test_peak_flops_come_from_the_table_by_device_kind_or_the_setting():
  assert mfu.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert mfu.peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
  assert mfu.peak_flops_per_device("NVIDIA A100-SXM4-40GB") == 312e12
  assert mfu.peak_flops_per_device("TPU v5 lite") == 197e12
  assert mfu.peak_flops_per_device("TPU v5") == 459e12
  assert mfu.peak_flops_per_device("cpu") is None
  # Names that contain a shorter one in the table get their own peak, not the shorter's.
  assert mfu.peak_flops_per_device("NVIDIA H100 NVL") == 835e12
  assert mfu.peak_flops_per_device("NVIDIA L40") == 181e12
  assert mfu.peak_flops_per_device("NVIDIA L40S") == 362e12
  assert mfu.peak_flops_per_device("NVIDIA L4") == 121e12
  assert mfu.peak_flops_per_device("NVIDIA GB200") == 2500e12
  assert mfu.peak_flops_per_device("NVIDIA B200") == 2250e12
  assert mfu.peak_flops_per_device("TPU v4 lite") == 138e12
  assert mfu.peak_flops_per_device("TPU v4") == 275e12
  assert mfu.peak_flops_per_device("cpu", given=2e12) == 2e12
  assert mfu.mfu(flops=4e12, seconds=2.0, peak_per_device=1e12, devices=4) == 0.5
  for bad in (0, -1.0, "989e12", True):
    with pytest.raises(UserError, match="peak_flops_per_device must be a positive number"):
      TrainerConfig(train_steps=1, peak_flops_per_device=bad)


def test_the_goodput_clock_counts_each_part_once():
  clock = GoodputClock()
  time.sleep(0.05)  # setup
  clock.switch("step")
  with clock.counting("data_wait"):
    time.sleep(0.1)
  time.sleep(0.05)  # back to step
  parts = clock.metrics()
  assert parts["time/setup"] == pytest.approx(0.05, abs=0.03)
  assert parts["time/data_wait"] == pytest.approx(0.1, abs=0.03)
  assert parts["time/step"] == pytest.approx(0.05, abs=0.03)
  assert parts["goodput"] == pytest.approx(parts["time/step"] / parts["time/wall"])
  assert _progress({"loss": 2.0, "tokens_per_second": 10.0, "mfu": 0.123, "goodput": 0.5}) == {
      "loss": "2.000", "tok_s": "10", "mfu": "12.3%", "goodput": "50%"}


def test_a_training_run_logs_mfu_and_where_its_wall_time_went(tmp_path):
  steps, data_sleep, eval_sleep = 4, 0.2, 0.3

  def batches(start, state=None):  # slow data, made on the training thread (prefetch 0)
    for batch in train_batches("default_add", LENGTHS, 8, seed=0, skip_batches=start):
      time.sleep(data_sleep)
      yield batch

  def evaluate(params):
    time.sleep(eval_sleep)
    return {"score": 1.0}

  config = TrainerConfig(train_steps=steps, log_every=1, checkpoint_every=2, eval_every=2,
                         prefetch=0, progress_bar=False, peak_flops_per_device=1e12)
  began = time.perf_counter()
  train(DecoderOnly(TINY_DECODER), OptimizerConfig(), config, batches, str(tmp_path), LENGTHS,
        evaluate=evaluate)
  wall = time.perf_counter() - began
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "loss" in r]
  assert [r["step"] for r in logged] == [1, 2, 3, 4]

  parts = ("setup", "compile", "step", "data_wait", "checkpoint", "eval")
  for record in logged:
    assert sum(record[f"time/{part}"] for part in parts) == pytest.approx(record["time/wall"],
                                                                          rel=1e-9)
    assert record["goodput"] == pytest.approx(record["time/step"] / record["time/wall"])
  last = logged[-1]
  assert last["time/wall"] <= wall
  assert last["time/data_wait"] >= steps * data_sleep
  assert last["time/eval"] >= eval_sleep and logged[1]["time/eval"] == 0  # evaluated after step 2
  assert logged[1]["time/checkpoint"] == 0 < logged[2]["time/checkpoint"]  # saved after step 2
  assert logged[0]["time/compile"] > 0 and last["time/compile"] == logged[0]["time/compile"]
  assert 0 < last["goodput"] < 1

  # MFU: the row's model FLOPs times 8 rows a step, over the same window as tokens/s.
  row_flops = DecoderOnly(TINY_DECODER).flops_per_sequence({"decoder": 80})
  for record, batch in zip(logged, train_batches("default_add", LENGTHS, 8, seed=0)):
    tokens = np.count_nonzero(batch["decoder_segment_ids"])
    window_s = tokens / record["tokens_per_second"]
    assert record["mfu"] == pytest.approx(row_flops * 8 / window_s / (1e12 * jax.device_count()),
                                          rel=1e-6)

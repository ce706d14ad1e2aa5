"""LoRA: adapters start as the base model, only they train, and a run resumes exactly on
the base it recorded."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import UserError
from flan_jax.model_dir import LORA_BASE_FILE
from flan_jax.models import lora
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.layer_stack import stack_layers
from flan_jax.models.lora import LoraConfig
from flan_jax.models.t5 import T5Config
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER, damage_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 32, "targets": 16}
ALL_LINEAR = LoraConfig(rank=4, alpha=8.0, target_modules=("all-linear",))
UNTIED = dataclasses.replace(TINY_DECODER, tie_embeddings=False)
TINY_T5 = T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=0)


def _with_lora(config, settings=ALL_LINEAR):
  return dataclasses.replace(config, lora=settings)


def _batch(encoder_decoder=False, rows=4):
  return next(train_batches("default_add", LENGTHS, rows, seed=0, encoder_decoder=encoder_decoder))


@pytest.mark.parametrize("family, config", [
    (DecoderOnly, UNTIED), (EncoderDecoder, TINY_T5)], ids=["decoder", "t5"])
def test_step_zero_logits_equal_the_base_models_exactly(family, config):
  # Every projection adapted, the output layer too: B = 0 makes each update exactly 0.
  settings = dataclasses.replace(ALL_LINEAR, target_modules=("all-linear", "lm_head"))
  base_network, network = family(config), family(_with_lora(config, settings))
  params = step_lib.init_params(network, jax.random.key(0), LENGTHS)
  adapters, _ = lora.partition(params, network.config)
  # The base model on its own, initialised from the same seed (adapters do not disturb it).
  base = step_lib.init_params(base_network, jax.random.key(0), LENGTHS)
  batch = _batch(family is EncoderDecoder)
  np.testing.assert_array_equal(np.asarray(network.logits(params, batch)),
                                np.asarray(base_network.logits(base, batch)))
  # PEFT's initialisation: A uniform within +-1/sqrt(fan-in), not zero; B zero.
  query_a = adapters["encoder" if family is EncoderDecoder else "layers_0"]
  query_a = (query_a["layers_0"] if family is EncoderDecoder else query_a)["attention"]["query_lora"]["a"]
  assert query_a.shape == (32, 4) and 0 < np.abs(query_a).max() <= 32 ** -0.5
  for path, leaf in jax.tree_util.tree_flatten_with_path(adapters)[0]:
    if path[-1].key == "b":
      assert not np.any(np.asarray(leaf)), path
  # A nonzero B changes the logits: the adapters are really in the product.
  nudged = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.01 if lora.is_adapter(tuple(k.key for k in path)) else x, params)
  assert not np.allclose(network.logits(nudged, batch), network.logits(params, batch))


def test_scaling_is_alpha_over_rank_or_over_its_square_root_with_rslora():
  assert LoraConfig(rank=16, alpha=32).scaling == 2.0
  assert LoraConfig(rank=16, alpha=32, use_rslora=True).scaling == 8.0


def test_adapters_are_sharded_by_their_base_weights_axes_and_never_by_rank():
  import flax.linen as nn
  network = DecoderOnly(_with_lora(TINY_DECODER))
  boxed = jax.eval_shape(lambda: network.init(jax.random.key(0), LENGTHS)["params"])
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), mesh_lib.LOGICAL_AXIS_RULES)
  attention, mlp = specs["layers_0"]["attention"], specs["layers_0"]["mlp"]
  assert tuple(attention["query_lora"]["a"]) == ("fsdp", None)  # [embed, rank]
  assert tuple(attention["query_lora"]["b"]) == (None, "tensor", None)  # [rank, heads, kv]
  assert tuple(attention["out_lora"]["a"]) == ("tensor", None, None)  # [heads, kv, rank]
  assert tuple(mlp["down"]["kernel_lora"]["a"]) == ("tensor", None)  # [mlp, rank]
  assert tuple(mlp["down"]["kernel_lora"]["b"]) == (None, "fsdp")  # [rank, embed]


def test_adapter_dropout_acts_only_while_training():
  config = _with_lora(TINY_DECODER, dataclasses.replace(ALL_LINEAR, dropout=0.5))
  network = DecoderOnly(config)
  params = step_lib.init_params(network, jax.random.key(0), LENGTHS)
  params = jax.tree_util.tree_map_with_path(  # a trained-looking B, so the update counts
      lambda path, x: x + 0.05 if path[-1].key == "b" else x, params)
  batch = _batch()
  evaluated = network.logits(params, batch)
  trained = network.logits(params, batch, dropout_rng=jax.random.key(1))
  assert not np.allclose(evaluated, trained)
  # The base itself has no dropout (dropout_rate 0): with B = 0 training changes nothing.
  zero_b = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 0 if path[-1].key == "b" else x, params)
  np.testing.assert_array_equal(network.logits(zero_b, batch),
                                network.logits(zero_b, batch, dropout_rng=jax.random.key(1)))


def _lora_state(config=TINY_DECODER, optimizer_config=OPTIMIZER, params=None):
  network = DecoderOnly(_with_lora(config))
  optimizer = make_optimizer(optimizer_config, 10)
  mesh = mesh_lib.make_mesh()
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, seed=0,
                                               params=params)
  step = step_lib.make_train_step(network, optimizer, mesh, shardings)
  return network, state, step, mesh


def test_a_step_changes_only_the_adapters_and_leaves_the_base_bit_identical():
  network, state, step, mesh = _lora_state()
  base_before = jax.device_get(state.frozen)
  adapters_before = jax.device_get(state.params)
  assert not lora.has_adapters(base_before)
  assert all(lora.is_adapter(tuple(str(k.key) for k in path))
             for path, _ in jax.tree_util.tree_flatten_with_path(adapters_before)[0])
  state, metrics = step(state, step_lib.global_batch(_batch(), mesh))
  for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(jax.device_get(state.frozen))):
    np.testing.assert_array_equal(a, b)
  after = jax.device_get(state.params)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), adapters_before, after)
  assert all(jax.tree.leaves(changed))  # every B (the gradient reaches it) and A (decay)

  # The adapters' gradient is the whole model's gradient restricted to them: the
  # loss differentiated with respect to every parameter, independently of the step.
  def loss(params):
    from flan_jax.training.losses import cross_entropy_loss
    total, weight, _ = cross_entropy_loss()(network, params, step_lib.global_batch(_batch(), mesh),
                                            None)
    return total / weight
  full = jax.jit(jax.grad(loss))(lora.combine(adapters_before, base_before))
  full_adapter_grads, _ = lora.partition(full, network.config)
  norm = float(optax.tree.norm(full_adapter_grads))
  np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)


def test_adamw_state_is_twice_the_adapters_not_the_model():
  network, state, _, _ = _lora_state()
  adapter_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(state.frozen))
  opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
  assert lora.adapter_count(state.params) * 4 == adapter_bytes
  assert 2 * adapter_bytes <= opt_bytes <= 2 * adapter_bytes + 64  # + step counts
  assert opt_bytes < base_bytes  # full finetuning would keep twice the base's bytes too


def test_a_bfloat16_base_keeps_float32_adapters():
  config = dataclasses.replace(TINY_DECODER, param_dtype="bfloat16")
  base = step_lib.init_params(DecoderOnly(TINY_DECODER), jax.random.key(0), LENGTHS)
  _, state, _, _ = _lora_state(config, params=jax.device_get(base))
  assert {x.dtype for x in jax.tree.leaves(state.frozen)} == {np.dtype("bfloat16")}
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}


def test_remat_chunked_loss_and_microbatches_give_the_plain_lora_step():
  from flan_jax.training import losses
  untied = dataclasses.replace(UNTIED, lora=dataclasses.replace(
      ALL_LINEAR, target_modules=("all-linear", "lm_head")))
  params = jax.device_get(step_lib.init_params(DecoderOnly(untied), jax.random.key(0), LENGTHS))
  batch = _batch(rows=4)
  results = []
  for remat, chunk, microbatches in (("none", 0, 1), ("full", 8, 2)):
    network = DecoderOnly(dataclasses.replace(untied, remat_policy=remat))
    optimizer = make_optimizer(OPTIMIZER, 10)
    mesh = mesh_lib.make_mesh()
    state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, 0, params)
    step = step_lib.make_train_step(network, optimizer, mesh, shardings,
                                    losses.cross_entropy_loss(chunk_length=chunk),
                                    microbatches=microbatches)
    for _ in range(2):  # the second step's gradient reaches every A through a nonzero B
      state, metrics = step(state, step_lib.global_batch(batch, mesh))
    results.append((float(metrics["loss"]), jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_scanned_and_unrolled_lora_layers_give_equal_losses():
  params = step_lib.init_params(DecoderOnly(_with_lora(TINY_DECODER)), jax.random.key(0), LENGTHS)
  params = jax.device_get(params)
  losses = {}
  for scan in (False, True):
    config = dataclasses.replace(TINY_DECODER, scan_layers=scan)
    _, state, step, mesh = _lora_state(config, params=stack_layers(params) if scan else params)
    losses[scan] = []
    for i in range(3):
      batch = next(train_batches("default_add", LENGTHS, 4, seed=0, skip_batches=i))
      state, metrics = step(state, step_lib.global_batch(batch, mesh))
      losses[scan].append(float(metrics["loss"]))
  assert losses[False][-1] < losses[False][0]
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def _batches(start_step, state=None):
  return train_batches("default_add", LENGTHS, 4, seed=0, skip_batches=start_step, state=state)


def _train(model_dir, steps, initial_params=None, base_source=None, checkpoint_every=2):
  config = TrainerConfig(train_steps=steps, checkpoint_every=checkpoint_every, log_every=1,
                         progress_bar=False)
  return train(DecoderOnly(_with_lora(TINY_DECODER)), OPTIMIZER, config, _batches,
               str(model_dir), LENGTHS, initial_params=initial_params, base_source=base_source)


def _losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_a_resumed_lora_run_repeats_the_straight_runs_losses_and_refuses_another_base(tmp_path):
  base = jax.device_get(step_lib.init_params(DecoderOnly(TINY_DECODER), jax.random.key(7),
                                             LENGTHS))
  straight = _train(tmp_path / "straight", 4, base, "/models/base")
  record = json.loads((tmp_path / "straight" / LORA_BASE_FILE).read_text())
  assert record["path"] == "/models/base" and len(record["fingerprint"]) == 64

  # The checkpoint holds the adapters and their optimizer state, not the base.
  import orbax.checkpoint as ocp
  saved = ocp.StandardCheckpointer().metadata(
      str(tmp_path / "straight" / "checkpoints" / "4" / "default")).item_metadata.tree
  saved_params = jax.tree_util.tree_flatten_with_path(saved["params"])[0]
  assert saved_params and all(lora.is_adapter(tuple(str(k.key) for k in path))
                              for path, _ in saved_params)

  # Cut after step 4's save, which a disk fault then damaged: the run sets it aside,
  # resumes from step 2 and repeats the straight run's losses bit for bit.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(tmp_path / "straight", interrupted)
  damage_checkpoint(interrupted / "checkpoints" / "4")
  resumed = _train(interrupted, 4, base, "/models/base")
  assert (interrupted / "checkpoints" / "4.damaged").is_dir()
  assert _losses(interrupted) == _losses(tmp_path / "straight")
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Another base, even under the same path, is refused before anything is restored.
  shutil.rmtree(interrupted / "checkpoints" / "4")
  other = jax.tree.map(lambda x: x.copy(), base)
  other["final_norm"]["scale"][0] += 1e-3
  with pytest.raises(UserError, match="trained on the base from /models/base .* but the base from "
                                       "/models/base has fingerprint"):
    _train(interrupted, 4, other, "/models/base")


def test_a_run_resumes_only_with_the_lora_settings_it_saved(tmp_path):
  from flan_jax.finetune import check_same_model
  from flan_jax.models import convert
  (tmp_path / "checkpoints").mkdir()
  config = _with_lora(TINY_DECODER)
  convert.save_run_config(str(tmp_path), config)
  check_same_model(str(tmp_path), config)  # the same settings, read back from JSON
  for other in (dataclasses.replace(config, lora=dataclasses.replace(ALL_LINEAR, rank=8)),
                TINY_DECODER):
    with pytest.raises(UserError, match="holds checkpoints of another model: lora="):
      check_same_model(str(tmp_path), other)
  convert.save_run_config(str(tmp_path), TINY_DECODER)  # a run without LoRA...
  assert "lora" not in json.loads((tmp_path / "flan_jax_config.json").read_text())
  with pytest.raises(UserError, match="lora=None"):  # ...resumes without it
    check_same_model(str(tmp_path), config)


def test_bad_lora_settings_are_one_error_line_with_exit_status_2(tmp_path):
  cases = {"--gin.LoraConfig.rank=0": "LoraConfig.rank must be a whole number of at least 1",
           "--gin.LoraConfig.alpha=0": "LoraConfig.alpha must be a number > 0",
           "--gin.LoraConfig.target_modules=['q','attn']": "'attn' is not a projection"}
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  # The three runs side by side: each spends its time starting up.
  runs = {binding: subprocess.Popen(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/quickstart.gin",
       f"--gin.MODEL_DIR={tmp_path / str(i)}", "--gin.train.lora=@LoraConfig()", binding],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i, binding in enumerate(cases)}
  for binding, run in runs.items():
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and cases[binding] in errors[0], stderr[-2000:]

"""A LoRA policy for preference optimization, on stories260K: the three references (a
frozen copy, precomputed log-probs, the base with the adapters switched off) give the
same first step; switched off, the adapters leave exactly the base model; a step moves
only the adapters; a resumed run is bit-identical to a straight one; 2 processes train
what 1 does; a reference that needs LoRA without it is one error line."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import job, model_dir as model_dir_lib, preference_finetune
from flan_jax.data import chat_templates, preference_pairs, preference_rows
from flan_jax.data import vocabularies
from flan_jax.errors import UserError
from flan_jax.models import convert, lora
from flan_jax.models.lora import LoraConfig
from flan_jax.models.pretrained import load_pretrained
from flan_jax.preference_finetune import PreferenceConfig, PreferenceData
from flan_jax.training import losses, preference_losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig
from preference_fixtures import TRL_NAMES, pairs_file  # noqa: F401  (pairs_file: a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")
LENGTHS = {"inputs": 64, "targets": 64}
ADAPTERS = LoraConfig(rank=8, alpha=16.0, target_modules=("all-linear",))


def _run(model_dir, pairs_file, steps, reference=None, checkpoint_every=2, model=None):
  preference = PreferenceConfig(data=PreferenceData(pairs_file, validation_records=2),
                                reference=reference, pairs_per_row=2)
  trainer = TrainerConfig(train_steps=steps, checkpoint_every=checkpoint_every, log_every=1,
                          progress_bar=False, prefetch=0, spike_factor=None)
  return preference_finetune.run(
      model_dir=str(model_dir), preference=preference, task_feature_lengths=LENGTHS,
      batch_size=2, trainer=trainer, initial_checkpoint_path=STORIES, lora=ADAPTERS,
      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0),
      **({"model": model} if model is not None else {}))


def _metrics(model_dir):
  return [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]


def _stories():
  """(vocabulary, the base network, the LoRA network, the base's parameters)."""
  checkpoint = model_dir_lib.resolve(STORIES)
  config, base = load_pretrained(checkpoint)
  vocabulary = vocabularies.library_vocabulary(None, checkpoint.tokenizer_dir)
  return (vocabulary, job.network_for(config, vocabulary),
          job.network_for(dataclasses.replace(config, lora=ADAPTERS), vocabulary), base)


def _pair_batch(vocabulary, bos_id):
  """Two real pairs rendered with the zephyr template, a pair per row."""
  template = chat_templates.builtin("zephyr")
  pairs = [preference_pairs.PreferencePair(({"role": "user", "content": p},), c, r)
           for p, c, r in [
      ("Tell me a story.", "Once upon a time there was a happy cat.", "No."),
      ("Who is Lily?", "Lily is a girl who likes to play.", "A dog ate the moon.")]]
  rows = [preference_rows.pair_row([preference_rows.tokenize_pair(
      template, vocabulary, pair, bos_id=bos_id)], 128, 1) for pair in pairs]
  return {k: jnp.asarray(np.stack([row[k] for row in rows])) for k in rows[0]}


def test_the_three_references_give_the_same_first_step(tmp_path, pairs_file):
  results = {mode: _run(tmp_path / mode, pairs_file, 1, mode)
             for mode in ("frozen", "precomputed", "base")}
  first = {mode: [m for m in _metrics(tmp_path / mode) if "loss" in m][0] for mode in results}
  for mode in ("frozen", "precomputed"):
    for name in ("loss", *TRL_NAMES):
      assert first[mode][name] == pytest.approx(first["base"][name], abs=1e-5), (mode, name)
  # Only the adapters-off reference stores nothing and scores in the step.
  assert not os.path.exists(tmp_path / "base" / preference_finetune.REFERENCE_FILE)
  for mode, result in results.items():
    # Before training the policy (B = 0) is its base, the reference: rewards 0, loss log 2.
    assert result["before"]["loss"] == pytest.approx(np.log(2), abs=1e-6), mode
    assert result["before"]["rewards/margins"] == pytest.approx(0, abs=1e-6), mode
    # The step moved the policy away from the reference.
    assert result["after"]["rewards/margins"] != pytest.approx(0, abs=1e-6), mode
    # A LoRA run: its base recorded, its checkpoints holding adapters only.
    recorded = json.loads((tmp_path / mode / "lora_base.json").read_text())
    assert recorded["path"] == STORIES
    saved = convert.load_orbax(str(tmp_path / mode), 1, with_base=False)[1]
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]
    assert names and all(lora.ADAPTER_SUFFIX in name for name in names), mode


def test_the_adapters_switched_off_are_exactly_the_base_model():
  vocabulary, base_network, network, base = _stories()
  batch = _pair_batch(vocabulary, network.bos_id)
  params = step_lib.init_params(network, jax.random.key(0), LENGTHS)
  adapters, _ = lora.partition(params, network.config)
  # Trained-looking adapters (B != 0), so the policy is not its base.
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                          adapters)
  policy = lora.combine(adapters, jax.tree.map(jnp.asarray, base))
  reference = jax.jit(lambda p, b: preference_losses.base_log_probs(base_network, network, p, b))(
      policy, batch)
  expected = jax.jit(lambda p, b: losses.token_log_probs(base_network, p, b))(base, batch)
  np.testing.assert_array_equal(np.asarray(reference), np.asarray(expected))
  assert np.count_nonzero(np.asarray(expected)) > 20  # answer tokens were scored
  with_adapters = losses.token_log_probs(network, policy, batch)
  assert np.abs(np.asarray(with_adapters) - np.asarray(expected)).max() > 1e-3


def test_a_step_moves_the_adapters_and_leaves_the_base_bit_identical():
  vocabulary, base_network, network, base = _stories()
  batch = _pair_batch(vocabulary, network.bos_id)
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, 0, params=base)
  before = jax.device_get(state.model_params)  # the step donates the state's buffers
  loss_fn = preference_losses.preference_loss(preference_losses.PreferenceLoss("sigmoid"),
                                              reference_family=base_network)
  step = step_lib.make_train_step(network, optimizer, mesh, shardings, loss_fn)
  state, metrics = step(state, step_lib.global_batch(jax.device_get(batch), mesh))
  assert float(metrics["loss"]) == pytest.approx(np.log(2), abs=1e-6)  # policy == reference
  after = jax.device_get(state.model_params)
  changed, unchanged = [], []
  for (path, old), (_, new) in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                                   jax.tree_util.tree_flatten_with_path(after)[0]):
    name = jax.tree_util.keystr(path)
    if lora.ADAPTER_SUFFIX in name:
      changed.append(not np.array_equal(old, new))
    else:
      np.testing.assert_array_equal(old, new, err_msg=name)
      unchanged.append(name)
  assert unchanged and changed and all(changed)  # every adapter leaf moved (B from 0; A too)


def test_a_resumed_lora_run_is_bit_identical_to_a_straight_one(tmp_path, pairs_file):
  _run(tmp_path / "straight", pairs_file, 4)
  # An interrupted run: its last checkpoint is step 2.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
  _run(tmp_path / "resumed", pairs_file, 4)
  straight = convert.load_orbax(str(tmp_path / "straight"), 4, with_base=False)[1]
  resumed = convert.load_orbax(str(tmp_path / "resumed"), 4, with_base=False)[1]
  assert lora.adapter_count(straight) > 0
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses_of = lambda d: [m["loss"] for m in _metrics(d) if "loss" in m]
  assert losses_of(tmp_path / "straight") == losses_of(tmp_path / "resumed")
  evaluated = lambda d: [(m["step"], m["eval/rewards/margins"]) for m in _metrics(d)
                         if "eval/rewards/margins" in m]
  assert evaluated(tmp_path / "resumed") == evaluated(tmp_path / "straight")


def test_reference_base_without_lora_is_one_clear_error():
  config = PreferenceConfig(data=PreferenceData("pairs.jsonl"), reference="base")
  with pytest.raises(UserError, match="train.lora = @LoraConfig()"):
    config.check(lora_policy=False)
  config.check(lora_policy=True)
  # The default reference follows the policy.
  unset = PreferenceConfig(data=PreferenceData("pairs.jsonl"))
  assert (unset.reference_mode(True), unset.reference_mode(False)) == ("base", "frozen")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", PYTHON=sys.executable,
              JAX_ENABLE_COMPILATION_CACHE="false",
              PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, ".pp"),
                                          os.environ.get("PYTHONPATH", "")]))


def test_reference_base_for_full_finetuning_on_the_command_line_is_one_error_line_exit_2(
    tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/dpo_quickstart.gin",
       f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.train.lora=None",
       "--gin.PreferenceConfig.reference='base'"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "reference='base'" in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_two_processes_train_the_lora_policy_as_one_does(tmp_path, pairs_file):
  """The quickstart (a LoRA policy, the base as reference) on the small pairs, over 2
  processes joined by jax.distributed, the base and adapters sharded over them (FSDP),
  and its settings in this one process: the same losses and reward margins, on the
  training batches and the held-out pairs."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  two, one = tmp_path / "two", tmp_path / "one"
  result = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "-n", "2", "-p", str(port), "-l",
       str(tmp_path / "logs"), "--gin_file=gin/dpo_quickstart.gin",
       f"--gin.PREFERENCE_DATA='{pairs_file}'", "--gin.PreferenceData.validation_records=2",
       "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=2", "--gin.EVAL_PERIOD=0",
       "--gin.train.log_every=1", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
       f"--gin.INITIAL_CHECKPOINT_PATH='{STORIES}'", f"--gin.MODEL_DIR={two}",
       "--gin.train.mesh_shape=(1, 1, 1)", "--gin.train.dcn_mesh_shape=(1, 2, 1)"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  preference = PreferenceConfig(data=PreferenceData(pairs_file, template="zephyr",
                                                    validation_records=2), pairs_per_row=1)
  preference_finetune.run(
      model_dir=str(one), preference=preference, task_feature_lengths=LENGTHS, batch_size=2,
      trainer=TrainerConfig(train_steps=3, checkpoint_every=30, log_every=1, progress_bar=False),
      initial_checkpoint_path=STORIES, lora=ADAPTERS,
      optimizer=OptimizerConfig(learning_rate=5e-4, warmup_steps=5, weight_decay=0.0))
  logged = lambda d, key: [m[key] for m in _metrics(d) if key in m]
  assert len(logged(two, "loss")) == 3
  np.testing.assert_allclose(logged(two, "loss"), logged(one, "loss"), rtol=0, atol=1e-5)
  np.testing.assert_allclose(logged(two, "rewards/margins"), logged(one, "rewards/margins"),
                             rtol=0, atol=1e-5)
  # Step 1: the policy is its base (to float rounding: the step compiles the policy's
  # pass, with its backward, apart from the reference's); then the adapters trained.
  assert logged(one, "rewards/margins")[0] == pytest.approx(0, abs=1e-5)
  assert logged(one, "rewards/margins")[-1] != pytest.approx(0, abs=1e-4)
  # The held-out pairs, before (all rewards 0, up to the order the sharded sums add in)
  # and after, on the sharded policy.
  held_out = logged(two, "eval/rewards/margins")
  assert len(held_out) == 2 and held_out[0] == pytest.approx(0, abs=1e-5)
  assert held_out[1] != pytest.approx(0, abs=1e-4)
  np.testing.assert_allclose(held_out, logged(one, "eval/rewards/margins"), rtol=0, atol=1e-5)
  record = lambda d: json.loads((d / "lora_base.json").read_text())
  assert record(two) == record(one)
  # The quickstart's LoRA settings are the ones this process used.
  assert lora.from_fields(json.loads((two / "flan_jax_config.json").read_text())["lora"]) == (
      ADAPTERS)

@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_chunked_log_probs_give_the_unchunked_loss_and_gradient(loss_type):
  """Rows of 128 positions projected 48 at a time (the last chunk padded), the reference
  the base with the adapters off: the loss, its metrics and the adapters' gradient are
  those of the whole logits at once."""
  vocabulary, base_network, network, base = _stories()
  batch = _pair_batch(vocabulary, network.bos_id)
  adapters, _ = lora.partition(step_lib.init_params(network, jax.random.key(0), LENGTHS),
                               network.config)
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                          adapters)
  base = jax.tree.map(jnp.asarray, base)
  config = preference_losses.PreferenceLoss(loss_type)
  results = []
  for chunk_length in (0, 48):
    loss_fn = preference_losses.preference_loss(config, reference_family=base_network,
                                                chunk_length=chunk_length)
    value = lambda a: (lambda out: (out[0] / out[1], out[2]))(
        loss_fn(network, lora.combine(a, base), batch, None))
    results.append(jax.jit(jax.value_and_grad(value, has_aux=True))(adapters))
  ((loss, sums), grads), ((chunked_loss, chunked_sums), chunked_grads) = results
  assert float(chunked_loss) == pytest.approx(float(loss), rel=1e-6, abs=1e-6)
  for name in sums:
    assert float(chunked_sums[name]) == pytest.approx(float(sums[name]), rel=1e-5, abs=1e-5), name
  assert np.abs(float(sums["rewards/margins"])) > 1e-4  # the policy is not its reference
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(chunked_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_an_int8_base_is_its_own_reference_and_refuses_the_float_ones(tmp_path, pairs_file):
  # The reference 'base' of an int8 policy is the int8 base with the adapters switched
  # off: before training the policy is exactly its reference (loss log 2, margins 0).
  int8 = dataclasses.replace(ADAPTERS, base_dtype="int8")
  preference = PreferenceConfig(data=PreferenceData(pairs_file, validation_records=2),
                                pairs_per_row=2)
  run = lambda reference, directory: preference_finetune.run(
      model_dir=str(tmp_path / directory),
      preference=dataclasses.replace(preference, reference=reference),
      task_feature_lengths=LENGTHS, batch_size=2,
      trainer=TrainerConfig(train_steps=1, checkpoint_every=1, log_every=1, progress_bar=False,
                            prefetch=0, spike_factor=None),
      initial_checkpoint_path=STORIES, lora=int8,
      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0))
  result = run(None, "base")
  assert result["before"]["loss"] == pytest.approx(np.log(2), abs=1e-6)
  assert result["before"]["rewards/margins"] == pytest.approx(0, abs=1e-6)
  assert result["after"]["rewards/margins"] != pytest.approx(0, abs=1e-6)
  # A float reference would not be the model the policy starts as: refused before anything
  # is written.
  for mode in ("frozen", "precomputed"):
    with pytest.raises(UserError, match="int8"):
      run(mode, mode)
    assert not os.path.exists(tmp_path / mode)


@pytest.mark.parametrize("reference", ["frozen", "precomputed"])
def test_a_bfloat16_policys_copied_reference_is_bfloat16_too(tmp_path, pairs_file, reference):
  # The policy's base is placed in bfloat16; a float32 reference would differ from it
  # before any step (rewards and accuracies not 0).
  from flan_jax.models.decoder import DecoderConfig
  result = _run(tmp_path / reference, pairs_file, 1, reference,
                model=DecoderConfig(param_dtype="bfloat16"))
  assert result["before"]["loss"] == pytest.approx(np.log(2), abs=1e-6)
  assert result["before"]["rewards/margins"] == 0
  assert result["before"]["rewards/accuracies"] == 0

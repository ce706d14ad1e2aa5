"""Evaluating and serving LoRA adapters: a LoRA run's MODEL_DIR, or an adapter (PEFT
directory or LoRA run) beside its base, gives `eval` the numbers the run's own held-out
evaluation gave, and `infer` the merged model a Hugging Face export holds, merged in
place without a second copy of the model."""

import dataclasses
import json
import os
import subprocess
import sys
import tracemalloc

import jax
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax import eval as flan_jax_eval, finetune, inference
from flan_jax.errors import UserError
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.models import convert, families, lora, lora_base, peft_io
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.lora import LoraConfig
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig
from tiny import TINY_DECODER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
needs_stories = pytest.mark.skipif(not os.path.isdir(STORIES),
                                   reason="stories260K-hf is not in shared/data")
LENGTHS = {"inputs": 48, "targets": 8}
EVALUATION = EvalConfig(max_examples_per_task=4, batch_size=8, evaluate_seen=False)
HELDOUT = "default_same_word_zs_opt"  # one options task: per-example log-likelihoods
ALL_LINEAR = LoraConfig(rank=4, alpha=8.0, target_modules=("all-linear",))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A LoRA run of 3 steps on stories260K, evaluated on held-out options before and after,
  and its adapters exported for PEFT."""
  root = tmp_path_factory.mktemp("lora")
  run = root / "run"
  results = finetune.finetune(
      model_dir=str(run), mixture_or_task_name="default_add", task_feature_lengths=LENGTHS,
      batch_size=4, trainer=TrainerConfig(train_steps=3, checkpoint_every=3, progress_bar=False),
      optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=0),
      heldout_mixture_or_task_name=HELDOUT, evaluation=EVALUATION, evaluate_before=True,
      initial_checkpoint_path=STORIES, lora=ALL_LINEAR, truncation_sample=0)
  convert.orbax_to_peft(str(run), str(root / "peft"))
  convert.orbax_to_hf(str(run), str(root / "merged"), merge_lora=True)
  return run, root / "peft", results


def _evaluate(checkpoint, out, adapter=None):
  """(results, per-example option log-likelihoods) of `checkpoint` (with `adapter`) on the
  held-out task, evaluated by the function `python -m flan_jax.eval` configures."""
  report = flan_jax_eval.evaluate(
      checkpoint_path=checkpoint, adapter_path=adapter, mixture_or_task_name=HELDOUT,
      task_feature_lengths=LENGTHS, output_dir=str(out), evaluation=EVALUATION,
      log_samples=True)
  lines = (out / "eval" / f"{HELDOUT}_samples" / f"{HELDOUT}.jsonl").read_text().splitlines()
  scores = [json.loads(line)["option_log_likelihoods"] for line in lines]
  return report["results"], np.asarray(scores, np.float64)


@needs_stories
def test_heldout_evaluation_of_a_lora_run_is_what_eval_gives_its_model_dir_and_adapters(
    lora_run, tmp_path):
  run, peft_dir, results = lora_run
  recorded = json.loads((run / "eval" / "heldout.json").read_text())
  assert recorded["before"] and recorded["after"]
  assert recorded["after"] == results["after"]
  run_results, run_scores = _evaluate(str(run), tmp_path / "run")
  assert run_results["all_mean/accuracy"] == pytest.approx(
      recorded["after"]["heldout_mean/accuracy"], abs=1e-5)
  assert run_results[f"{HELDOUT}/accuracy"] == pytest.approx(
      recorded["after"][f"{HELDOUT}/accuracy"], abs=1e-5)
  # The same model from its parts: the base, with the PEFT export or the run beside it.
  for name, adapter in [("peft", peft_dir), ("beside", run)]:
    adapted_results, adapted_scores = _evaluate(STORIES, tmp_path / name, adapter=str(adapter))
    assert adapted_results == pytest.approx(run_results, abs=1e-5)
    np.testing.assert_allclose(adapted_scores, run_scores, atol=1e-5)
  # ...and not the base alone: the adapters moved the scores.
  base_results, base_scores = _evaluate(STORIES, tmp_path / "base")
  assert np.abs(base_scores - run_scores).max() > 1e-3
  # "before" was the base itself: at step 0 every adapter's B is zero.
  assert base_results["all_mean/accuracy"] == pytest.approx(
      recorded["before"]["heldout_mean/accuracy"], abs=1e-5)


PROMPTS = [("Which word is the same: cat, dog, cat?", ["cat", "dog"]),
           ("Add 2 and 3.", ["5", "6", "23"])]


def _predictions(predictor):
  return (predictor.generate([text for text, _ in PROMPTS]),
          np.asarray(predictor.score(PROMPTS).log_likelihoods, dtype=object))


@needs_stories
def test_infer_serves_a_lora_run_as_its_merged_hugging_face_export(lora_run, tmp_path):
  run, peft_dir, _ = lora_run
  settings = dict(max_input_length=LENGTHS["inputs"], max_new_tokens=6)
  texts, scores = _predictions(inference.load_predictor(str(run.parent / "merged"), **settings))
  served = {"run": inference.load_predictor(str(run), **settings),
            "peft": inference.load_predictor(STORIES, adapter=str(peft_dir), **settings),
            "beside": inference.load_predictor(STORIES, adapter=str(run), **settings)}
  for name, predictor in served.items():
    assert predictor.network.config.lora is None, name  # merged: plain projections
    ours_texts, ours_scores = _predictions(predictor)
    assert ours_texts == texts, name
    for ours, theirs in zip(ours_scores, scores):
      np.testing.assert_allclose(np.asarray(ours, float), np.asarray(theirs, float), atol=1e-5)
  base_texts, base_scores = _predictions(inference.load_predictor(STORIES, **settings))
  assert any(np.abs(np.asarray(b, float) - np.asarray(s, float)).max() > 1e-3
             for b, s in zip(base_scores, scores))


@needs_stories
def test_the_lm_eval_backend_takes_an_adapter_beside_its_base(lora_run):
  pytest.importorskip("lm_eval")
  from lm_eval.api.instance import Instance
  from flan_jax import lm_eval as flan_jax_lm_eval
  run, peft_dir, _ = lora_run
  pairs = [("Once upon a time", " there was a girl"), ("The cat sat", " on the mat")]
  requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

  def loglikelihoods(model):
    return np.asarray([value for value, _ in model.loglikelihood(requests, disable_tqdm=True)])
  adapted = flan_jax_lm_eval.from_model_args({"checkpoint": STORIES, "adapter": str(peft_dir),
                                              "batch_size": 4})
  assert str(peft_dir) in adapted.get_model_info()["checkpoint"]
  merged = flan_jax_lm_eval.load(str(run.parent / "merged"), batch_size=4)
  base = flan_jax_lm_eval.load(STORIES, batch_size=4)
  np.testing.assert_allclose(loglikelihoods(adapted), loglikelihoods(merged), atol=1e-5)
  assert np.abs(loglikelihoods(adapted) - loglikelihoods(base)).max() > 1e-3


def _decoder_logits(config, params, tokens):
  ones = np.ones_like(tokens)
  batch = {"decoder_input_tokens": tokens, "decoder_positions": np.cumsum(ones, 1) - 1,
           "decoder_segment_ids": ones, "decoder_causal_attention": 0 * ones}
  return np.asarray(jax.jit(families.family_for(config).logits)(params, batch))


def _trained_adapters(config, seed=0):
  """Host parameters of `config` (LoRA) whose B factors are random, not PEFT's zeros."""
  network = families.family_for(config)
  params = jax.device_get(step_lib.init_params(network, jax.random.key(seed), LENGTHS))
  rng = np.random.default_rng(seed)

  def randomize_b(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] == "b":
      return rng.normal(0, 0.5, leaf.shape).astype(leaf.dtype)
    return np.array(leaf)
  return jax.tree_util.tree_map_with_path(randomize_b, params)


def test_merging_in_place_gives_the_unmerged_logits_with_the_base_trees_leaves():
  config = dataclasses.replace(TINY_DECODER, tie_embeddings=False, lora=dataclasses.replace(
      ALL_LINEAR, target_modules=("all-linear", "lm_head")))
  params = _trained_adapters(config)
  tokens = np.random.RandomState(0).randint(3, 259, size=(2, 12))
  unmerged = _decoder_logits(config, params, tokens)
  _, base = lora.partition(params, config)
  base_leaves = jax.tree.leaves(base)
  merged_config, merged = peft_io.merge(params, config, in_place=True)
  assert merged is params and merged_config.lora is None
  assert not lora.has_adapters(merged)
  leaves = jax.tree.leaves(merged)
  assert len(leaves) == len(base_leaves)
  assert sum(x.nbytes for x in leaves) == sum(x.nbytes for x in base_leaves)
  assert [x.dtype for x in leaves] == [x.dtype for x in base_leaves]
  np.testing.assert_allclose(_decoder_logits(merged_config, merged, tokens), unmerged,
                             atol=1e-5)
  assert np.abs(unmerged - _decoder_logits(merged_config, base, tokens)).max() > 1e-2


def test_merging_in_place_needs_about_one_weight_more_not_a_second_model():
  # Wide enough that the adapted weights are most of the model: a merge that kept the
  # unmerged weights until the end would need their bytes again.
  config = DecoderConfig(vocab_size=259, num_layers=4, embed_dim=128, num_heads=4,
                         num_kv_heads=4, head_dim=32, mlp_dim=512,
                         lora=dataclasses.replace(ALL_LINEAR, rank=2))
  params = _trained_adapters(config)
  _, base = lora.partition(params, config)
  adapted = sum(leaf.nbytes for path, leaf in jax.tree_util.tree_flatten_with_path(base)[0]
                if any(str(getattr(k, "key", k)) in ("query", "gate", "up", "down")
                       for k in path))
  largest = max(leaf.nbytes for leaf in jax.tree.leaves(base))
  del base

  def growth(in_place: bool) -> int:
    """Peak bytes held during the merge beyond the model itself."""
    tracemalloc.start()  # before the copy: freeing its weights counts too
    tree = jax.tree.map(np.copy, params)  # new dicts, arrays only this tree holds
    model, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    _, merged = peft_io.merge(tree, config, in_place=in_place)
    del tree, merged
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - model

  assert growth(in_place=True) < 3 * largest  # one float32 weight and the product's temporary
  assert growth(in_place=False) > adapted  # the caller's tree keeps every unmerged weight


@needs_stories
def test_an_adapter_that_is_none_or_does_not_fit_its_base_is_one_error_line(lora_run, tmp_path):
  run, peft_dir, _ = lora_run
  other = tmp_path / "other"  # a tiny random orbax model: another base
  other_config = dataclasses.replace(TINY_DECODER, vocab_size=512)
  convert.save_orbax(jax.device_get(step_lib.init_params(
      families.family_for(other_config), jax.random.key(0), LENGTHS)), other_config, str(other))
  with pytest.raises(UserError, match="do not fit rank 4 on this model's"):
    inference.load_predictor(str(other), adapter=str(peft_dir))
  # A run beside a base of other sizes names the size; beside one of its sizes but other
  # values, the fingerprint.
  with pytest.raises(UserError, match="was trained on a model with embed_dim="):
    inference.load_predictor(str(other), adapter=str(run))
  stories_config, stories = convert.load_hf(STORIES)
  stories["embedding"] = np.asarray(stories["embedding"]) + np.float32(1e-3)
  convert.save_orbax(stories, stories_config, str(tmp_path / "changed"))
  with pytest.raises(UserError, match="adapters only fit the base they were trained on"):
    inference.load_predictor(str(tmp_path / "changed"), adapter=str(run))
  with pytest.raises(UserError, match="already holds LoRA adapters"):
    inference.load_predictor(str(run), adapter=str(peft_dir))
  # On the command line (eval's; infer hands its --adapter to the same loading): one
  # error line, exit status 2.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="is neither a PEFT adapter directory"):
    inference.load_predictor(STORIES, adapter=str(empty))
  commands = [
      ["flan_jax.eval", "--gin_file=gin/eval.gin", f"--gin.CHECKPOINT_PATH='{STORIES}'",
       f"--adapter={empty}", f"--gin.OUTPUT_DIR='{tmp_path / 'out'}'",
       f"--gin.MIXTURE_OR_TASK_NAME='{HELDOUT}'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 8}"]]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  runs = [subprocess.Popen([sys.executable, "-m", *command], cwd=REPO, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for command in commands]
  for command, process in zip(commands, runs):
    _, stderr = process.communicate('{"inputs": "hi"}\n', timeout=300)
    assert process.returncode == 2, (command[0], stderr[-2000:])
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "is neither a PEFT adapter directory" in errors[0], errors


def test_a_host_bases_fingerprint_read_leaf_by_leaf_is_the_one_training_recorded():
  # Training fingerprints the base on the devices in one call; eval and infer read it back
  # into host arrays and fingerprint it a leaf at a time: the digests must agree.
  config = dataclasses.replace(TINY_DECODER, param_dtype="bfloat16")
  on_device = step_lib.init_params(families.family_for(config), jax.random.key(1), LENGTHS)
  on_device = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), on_device)
  host = jax.device_get(on_device)
  assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(host))
  assert lora_base.fingerprint(host) == lora_base.fingerprint(on_device)
  changed = jax.tree.map(np.copy, host)
  changed["layers_1"]["mlp"]["up"]["kernel"][3, 5] += 1
  assert lora_base.fingerprint(changed) != lora_base.fingerprint(host)


def test_a_scanned_bfloat16_lora_run_beside_its_orbax_base_is_the_run_itself(tmp_path):
  from flan_jax import checkpoint_eval, model_dir
  from flan_jax.data.pipeline import train_batches
  from flan_jax.models.layer_stack import stack_layers
  from flan_jax.training.trainer import train
  config = dataclasses.replace(TINY_DECODER, scan_layers=True, param_dtype="bfloat16",
                               lora=ALL_LINEAR)
  base_dir, run = str(tmp_path / "base"), tmp_path / "run"

  base = jax.device_get(step_lib.init_params(families.family_for(TINY_DECODER),
                                             jax.random.key(7), LENGTHS))
  convert.save_orbax(base, TINY_DECODER, base_dir)
  convert.save_run_config(str(run), config, base_dir)
  train(families.family_for(config), OptimizerConfig(learning_rate=1e-2, warmup_steps=0),
        TrainerConfig(train_steps=1, checkpoint_every=1, progress_bar=False),
        lambda start, state=None: train_batches("default_add", LENGTHS, 4, seed=0,
                                                skip_batches=start, state=state),
        str(run), LENGTHS, initial_params=stack_layers(base), base_source=base_dir)
  whole_config, whole = checkpoint_eval.load_checkpoint(str(run))
  beside_config, beside = checkpoint_eval.load_checkpoint(
      model_dir.resolve(base_dir, adapter=str(run)))
  assert beside_config == whole_config and whole_config.lora == ALL_LINEAR
  flat_whole = jax.tree_util.tree_flatten_with_path(whole)[0]
  flat_beside = jax.tree_util.tree_flatten_with_path(beside)[0]
  assert [path for path, _ in flat_beside] == [path for path, _ in flat_whole]
  for (path, ours), (_, theirs) in zip(flat_beside, flat_whole):
    assert ours.dtype == theirs.dtype, path  # the base in bfloat16, as it trained
    np.testing.assert_array_equal(ours, theirs)
  assert np.abs(beside["layers_0"]["mlp"]["up"]["kernel_lora"]["b"]).max() > 0  # trained


def test_an_adapter_run_brings_its_chat_template_and_held_out_record(tmp_path):
  from flan_jax import model_dir
  base, run = tmp_path / "base", tmp_path / "run"
  (base / "hf_files").mkdir(parents=True)
  (base / "hf_files" / "tokenizer.json").write_text("{}")
  (base / "config.json").write_text("{}")
  (run / "checkpoints").mkdir(parents=True)
  (run / model_dir.TEMPLATE_FILE).write_text("{}")
  (run / model_dir.HELD_OUT_FILE).write_text('{"chat": {"validation_records": 2}}')
  alone = model_dir.resolve(str(base))
  adapted = model_dir.resolve(str(base), adapter=str(run))
  assert alone.chat_template_file() is None and alone.held_out() == {}
  assert adapted.chat_template_file() == str(run / model_dir.TEMPLATE_FILE)
  assert adapted.held_out() == {"chat": {"validation_records": 2}}
  assert adapted.tokenizer_dir == str(base / "hf_files")  # the base's own tokenizer
  assert adapted.adapter_run == str(run) and adapted.kind == "hf"
  assert model_dir.resolve(alone, adapter=str(run)) == adapted
  # A PEFT directory records no training: the base's files stand.
  (tmp_path / "peft").mkdir()
  peft_adapted = model_dir.resolve(str(base), adapter=str(tmp_path / "peft"))
  assert peft_adapted.adapter_run is None and peft_adapted.chat_template_file() is None


def test_an_int8_adapter_run_beside_a_base_of_other_sizes_is_one_clear_error(tmp_path):
  # The base is quantized as the run quantized it, which another architecture cannot be:
  # the sizes are compared first, so the error names them.
  from flan_jax import checkpoint_eval, model_dir
  int8 = dataclasses.replace(TINY_DECODER, lora=dataclasses.replace(ALL_LINEAR,
                                                                    base_dtype="int8"))
  wider = dataclasses.replace(TINY_DECODER, embed_dim=TINY_DECODER.embed_dim + 16)
  base_dir, run = str(tmp_path / "base"), tmp_path / "run"
  convert.save_orbax(jax.device_get(step_lib.init_params(families.family_for(wider),
                                                         jax.random.key(0), LENGTHS)),
                     wider, base_dir)
  convert.save_run_config(str(run), int8, base_dir)
  (run / model_dir.CHECKPOINTS_DIR).mkdir()
  with pytest.raises(UserError, match="embed_dim"):
    checkpoint_eval.load_checkpoint(model_dir.resolve(base_dir, adapter=str(run)))

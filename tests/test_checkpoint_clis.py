"""The checkpoint tools on a run's MODEL_DIR: `python -m flan_jax.eval` scores it exactly
as the run scored itself, and `python -m flan_jax.infer` prompts it exactly as training
and evaluation did."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax import checkpoint_eval, finetune, inference
from flan_jax.data import vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.models import convert, families
from flan_jax.models.decoder import DecoderConfig
from flan_jax.training.trainer import TrainerConfig
from tiny import damage_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "data" / "models" / "stories260K-hf"
LENGTHS = {"inputs": 64, "targets": 16}
EVALUATION = EvalConfig(max_examples_per_task=6, batch_size=8, evaluate_seen=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  results = finetune.finetune(
      model_dir=str(model_dir), mixture_or_task_name="default_add", task_feature_lengths=LENGTHS,
      batch_size=4, trainer=TrainerConfig(train_steps=4, checkpoint_every=2, eval_every=2,
                                          progress_bar=False),
      model=DecoderConfig(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16,
                          mlp_dim=64),
      heldout_mixture_or_task_name="default_same_word", evaluation=EVALUATION,
      evaluate_before=False, truncation_sample=0)
  return model_dir, results


def test_the_cli_reproduces_the_runs_own_final_evaluation(run, tmp_path):
  model_dir, results = run
  out = tmp_path / "out"
  completed = subprocess.run(
      [sys.executable, "-m", "flan_jax.eval", "--gin_file=gin/eval.gin",
       f"--gin.CHECKPOINT_PATH={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=default_same_word",
       f"--gin.OUTPUT_DIR={out}", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
       "--gin.EvalConfig.max_examples_per_task=6", "--gin.EvalConfig.batch_size=8",
       "--gin.EvalConfig.length_normalize=False"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  report = json.loads((out / "eval" / "default_same_word.json").read_text())
  per_task = {k: v for k, v in report["results"].items() if "_mean/" not in k}
  after = {k: v for k, v in results["after"].items() if "_mean/" not in k}
  assert per_task == after and len(per_task) >= 8  # 4 evaluated variants x (accuracy, baseline)
  assert report["results"]["all_mean/accuracy"] == results["after"]["heldout_mean/accuracy"]
  assert report["groups"]["cluster_comparison"] == ["default_same_word_zs_opt"]
  assert (out / "eval" / "default_same_word.png").read_bytes()[:4] == b"\x89PNG"
  assert "all_mean" in completed.stdout


def test_evaluation_during_training_logs_what_evaluating_that_step_gives(run, tmp_path):
  model_dir, results = run
  lines = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  logged = {line["step"]: line for line in lines if "eval/heldout_mean/accuracy" in line}
  assert sorted(logged) == [2, 4]  # every 2 steps, and after training (no "before" here)
  assert logged[4]["eval/heldout_mean/accuracy"] == results["after"]["heldout_mean/accuracy"]
  assert "eval/cluster_comparison_mean/accuracy" in logged[2]
  assert not any("/" in k and "_mean/" not in k for k in logged[2] if k != "step")
  # Step 2's scalars are the step-2 checkpoint's evaluation, done afresh.
  report = checkpoint_eval.evaluate_checkpoint(
      str(model_dir), "default_same_word", LENGTHS, str(tmp_path), step=2,
      evaluation=EVALUATION)
  assert logged[2]["eval/heldout_mean/accuracy"] == report["results"]["all_mean/accuracy"]
  assert logged[2]["eval/heldout_fs_opt_mean/accuracy"] == report["results"][
      "variant_fs_opt_mean/accuracy"]


def test_an_earlier_step_and_bad_paths(run, tmp_path):
  model_dir, _ = run
  report = checkpoint_eval.evaluate_checkpoint(
      str(model_dir), "default_same_word_zs_opt", LENGTHS, str(tmp_path), step=2,
      evaluation=EVALUATION)
  assert set(report["results"]) >= {"default_same_word_zs_opt/accuracy", "all_mean/accuracy"}
  with pytest.raises(UserError, match="not a directory"):
    checkpoint_eval.load_checkpoint(str(tmp_path / "missing"))
  with pytest.raises(UserError, match="needs a run directory"):
    checkpoint_eval.load_checkpoint(str(tmp_path), step=2)


def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning_or_named_when_asked_for(
    run, tmp_path, caplog):
  model_dir, _ = run
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  damage_checkpoint(copy / "checkpoints" / "4")
  # eval and infer read a run through load_checkpoint, convert through load_orbax.
  with caplog.at_level("WARNING"):
    _, params = checkpoint_eval.load_checkpoint(str(copy))
  assert re.search(r"Checkpoint 4 in \S+ does not restore \(.+\); reading checkpoint 2",
                   caplog.text)
  _, step_2 = checkpoint_eval.load_checkpoint(str(model_dir), step=2)
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(step_2), strict=True):
    np.testing.assert_array_equal(ours, theirs)
  assert (copy / "checkpoints" / "4").is_dir()  # reading a run never changes it
  with pytest.raises(UserError, match=r"checkpoint 4 in \S+ does not restore \(.+\): pass "
                                      r"the step of an intact one \(2\)"):
    convert.load_orbax(str(copy), step=4)
  damage_checkpoint(copy / "checkpoints" / "2")
  with pytest.raises(UserError, match=r"no checkpoint in \S+ restores: step 4 \(.+\); step 2"):
    convert.load_orbax(str(copy))


def _eval_model_and_examples(model_dir, task_name):
  config, params = checkpoint_eval.load_checkpoint(str(model_dir))
  network = families.family_for(config, bos_id=0, num_token_ids=259)
  model = evaluator.make_eval_model(network, params, LENGTHS, 1, batch_size=8)
  task = seqio.get_mixture_or_task(task_name)
  return model, evaluator._start(task, model, EVALUATION)


def test_infer_scores_and_generates_exactly_as_evaluation_prompts(run):
  model_dir, _ = run
  predictor = inference.load_predictor(str(model_dir), max_input_length=LENGTHS["inputs"],
                                       max_new_tokens=LENGTHS["targets"])
  # Options: the evaluator's log-likelihoods for its own (training-format) prompts.
  model, scored = _eval_model_and_examples(model_dir, "default_same_word_zs_opt")
  pairs = [evaluator._option_pairs(ex, p, model, scored.vocabulary, scored.counts)
           for ex, p in zip(scored.examples, scored.prompts)]
  theirs = model.score(pairs).log_likelihoods
  texts = [evaluator._text(ex["inputs_pretokenized"]) for ex in scored.examples]
  options = [evaluator._options(ex) for ex in scored.examples]
  ours = predictor.score(list(zip(texts, options))).log_likelihoods
  np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-5)
  # Generation: the evaluator's greedy texts for the same prompts.
  model, generated = _eval_model_and_examples(model_dir, "default_add_zs_noopt")
  expected = evaluator._generate_predictions(generated.examples, generated.prompts, model,
                                             EVALUATION, generated.vocabulary)
  texts = [evaluator._text(ex["inputs_pretokenized"]) for ex in generated.examples]
  assert predictor.generate(texts) == expected


def test_infer_cli_answers_jsonl_from_stdin_with_options_generation_and_stop(run):
  model_dir, _ = run
  requests = [{"inputs": "Are cat and dog the same word?", "options": ["yes", "no"], "id": 7},
              {"inputs": "What is 2 plus 3?"}]
  completed = subprocess.run(
      [sys.executable, "-m", "flan_jax.infer", f"--checkpoint={model_dir}", "--input=-",
       "--max_input_length=64", "--max_new_tokens=16", "--stop=0"],
      input="".join(json.dumps(r) + "\n" for r in requests), cwd=REPO, capture_output=True,
      text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  answers = [json.loads(line) for line in completed.stdout.splitlines()]
  assert [a["inputs"] for a in answers] == [r["inputs"] for r in requests]
  assert answers[0]["id"] == 7 and len(answers[0]["scores"]) == 2
  assert answers[0]["prediction"] == ["yes", "no"][int(np.argmax(answers[0]["scores"]))]
  predictor = inference.load_predictor(str(model_dir), max_input_length=64, max_new_tokens=16)
  full = predictor.generate([requests[1]["inputs"]])[0]
  assert answers[1]["prediction"] == full.split("0")[0]
  assert "2 requests answered" in completed.stderr


def test_infer_requests_errors_name_the_line():
  lines = ['{"inputs": "fine"}', "", "not json", '{"inputs": 3}']
  with pytest.raises(UserError, match="<stdin>:3: not JSON"):
    list(inference.read_requests(lines, "<stdin>"))
  with pytest.raises(UserError, match='f.jsonl:1: needs a string field "inputs"'):
    list(inference.read_requests(['{"text": "x"}'], "f.jsonl"))
  with pytest.raises(UserError, match="f.jsonl:1: \"options\" must be"):
    list(inference.read_requests(['{"inputs": "x", "options": []}'], "f.jsonl"))


@pytest.mark.parametrize("setting", ["max_new_tokens", "batch_size", "max_input_length"])
def test_infer_settings_below_one_are_one_clear_error(run, setting):
  model_dir, _ = run
  with pytest.raises(UserError, match=f"{setting} must be a whole number of at least 1, got 0"):
    predictor = inference.load_predictor(str(model_dir), **{setting: 0})
    predictor.generate(["What is 2 plus 3?"])


def test_interactive_loop_answers_each_line_until_eof(run):
  model_dir, _ = run
  predictor = inference.load_predictor(str(model_dir), max_input_length=64, max_new_tokens=8,
                                       stop=("\n",))
  lines, written = iter(["What is 1 plus 1?", "", "What is 2 plus 2?"]), []

  def read(prompt):
    try:
      return next(lines)
    except StopIteration:
      raise EOFError from None

  inference.interactive(predictor, read, written.append)
  seed = predictor.decode.seed  # each turn its own seed after it
  expected = predictor.generate(["What is 1 plus 1?"], seed=seed) + predictor.generate(
      ["What is 2 plus 2?"], seed=seed + 1)
  assert written[1:3] == expected and len(written) == 4


@pytest.mark.skipif(not STORIES.is_dir(), reason="stories260K-hf is not in shared/data")
def test_infer_prompts_a_causal_hf_checkpoint_as_transformers_does():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  predictor = inference.load_predictor(str(STORIES), max_input_length=32, max_new_tokens=20)
  vocabulary = predictor.vocabulary
  text = "Once upon a time"
  # A causal checkpoint continues [BOS] + prompt, with no EOS between prompt and answer.
  prompt = [vocabularies.bos_id(vocabulary), *vocabulary.encode(text)]
  model = transformers.AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32)
  with torch.no_grad():
    theirs = model.eval().generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20,
                                   pad_token_id=0)[0, len(prompt):].tolist()
  if vocabulary.eos_id in theirs:
    theirs = theirs[:theirs.index(vocabulary.eos_id)]
  assert predictor.generate([text])[0] == vocabulary.decode(theirs)

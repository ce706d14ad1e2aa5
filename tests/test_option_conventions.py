"""How answer options are scored: FLAN's targets (with EOS) or lm-eval's continuations
(without), length normalisation, and the cuts that fit a row, all against references
computed by hand or by transformers."""

import dataclasses
import json
import logging
import os

import numpy as np
import pytest
import seqio

from flan_jax.data import flan_task
from flan_jax.data.vocabularies import vocabulary_from_path
from flan_jax.evaluation import evaluator
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.evaluation.scoring import ScoredOptions
from flan_jax.models.families import family_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
needs_stories = pytest.mark.skipif(not (os.path.isdir(STORIES) and
                                        os.path.isdir(os.path.join(DATA, "eval", "mmlu"))),
                                   reason="stories260K-hf or MMLU is not in shared/data")


def _recording(model: evaluator.EvalModel):
  """`model` whose option scorer keeps every (prompt, option) pair and its score."""
  seen = []

  def score(examples):
    scored = model.score(examples)
    for pairs, values in zip(examples, scored.log_likelihoods):
      seen.extend((np.asarray(p), np.asarray(o), v) for (p, o), v in zip(pairs, values))
    return scored

  return dataclasses.replace(model, score=score), seen


@pytest.fixture(scope="module")
def stories():
  import torch
  import transformers
  from flan_jax.models import hf_llama
  config, params = hf_llama.load_hf_checkpoint(STORIES)
  vocabulary = vocabulary_from_path(os.path.join(STORIES, "tokenizer.model"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  return family_for(config, bos_id=1), params, vocabulary, hf


def _mmlu_task(vocabulary, name: str) -> seqio.Task:
  from flan_jax_tasks.library import mmlu
  spec = dataclasses.replace(mmlu.spec(DATA, "world_religions"), name=name, vocabulary=vocabulary)
  return seqio.get_mixture_or_task(flan_task.register_flan_task(spec)["zs_noopt"])


def _transformers_log_likelihood(hf, tokens: list[int], option_length: int) -> float:
  """Sum of the last `option_length` tokens' log-probabilities given all before them."""
  import torch
  with torch.no_grad():
    log_probs = torch.log_softmax(hf(torch.tensor([tokens])).logits[0].double(), -1).numpy()
  start = len(tokens) - option_length
  return float(sum(log_probs[start + k - 1, t] for k, t in enumerate(tokens[start:])))


@needs_stories
def test_mmlu_scores_each_letter_alone_as_lm_eval_does_with_no_eos(stories):
  network, params, vocabulary, hf = stories
  task = _mmlu_task(vocabulary, "mmlu_conventions_wr")
  lengths = {"inputs": 400, "targets": 4}
  model, seen = _recording(evaluator.make_eval_model(network, params, lengths, vocabulary.eos_id,
                                                     batch_size=8))
  evaluator.evaluate_task(task, model, EvalConfig(max_examples_per_task=3))
  assert len(seen) == 12  # 3 questions x A-D
  for prompt, option, score in seen:
    # lm-eval's continuation " A": the letter's own tokens, no EOS after them.
    assert option.tolist() in [vocabulary.encode(letter) for letter in "ABCD"]
    reference = _transformers_log_likelihood(hf, [1, *prompt.tolist(), *option.tolist()],
                                             len(option))
    assert score == pytest.approx(reference, abs=1e-4)


@needs_stories
def test_flan_tasks_still_score_options_as_training_targets_with_eos(stories):
  network, params, vocabulary, _ = stories
  spec = flan_task.FlanTaskSpec(
      name="conventions_yes_no", cluster="conventions", vocabulary=vocabulary,
      records=lambda split: [{"q": f"is {i} even", "a": "yes" if i % 2 == 0 else "no"}
                             for i in range(4)],
      templates=(flan_task.Template("{q}?", "{a}"),), options=("yes", "no"), few_shot=False)
  task = seqio.get_mixture_or_task(flan_task.register_flan_task(spec)["zs_opt"])
  assert flan_task.option_scoring(task.name) == "target"
  model, seen = _recording(evaluator.make_eval_model(
      network, params, {"inputs": 32, "targets": 8}, vocabulary.eos_id, batch_size=8))
  evaluator.evaluate_task(task, model, EvalConfig(max_examples_per_task=2))
  assert seen and all(option[-1] == vocabulary.eos_id for _, option, _ in seen)


def test_an_unknown_option_scoring_is_one_clear_error():
  spec = flan_task.FlanTaskSpec(name="conventions_bad", cluster="c", records=lambda s: [],
                                templates=(flan_task.Template("{q}", "{a}"),),
                                option_scoring="lm_eval")
  with pytest.raises(ValueError, match="option_scoring='lm_eval'; use one of"):
    flan_task.register_flan_task(spec)


def test_eval_gin_ranks_options_by_their_summed_log_likelihood_as_lm_evals_acc():
  import subprocess
  import sys
  script = ("import gin, flan_jax.eval; gin.parse_config_file('gin/eval.gin'); "
            "print(gin.query_parameter('EvalConfig.length_normalize'))")
  path = os.pathsep.join([REPO, os.path.join(REPO, ".pp"), os.environ.get("PYTHONPATH", "")])
  completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                             text=True, timeout=300, env=dict(os.environ, PYTHONPATH=path))
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert completed.stdout.split()[-1] == "False"


@needs_stories
def test_length_normalisation_changes_mmlu_choices_when_letters_differ_in_token_count(stories):
  network, params, vocabulary, _ = stories
  # This SentencePiece vocabulary spells "A" as two tokens ("▁", "A") and "B" as one.
  assert [len(vocabulary.encode(letter)) for letter in "ABCD"] == [2, 1, 2, 2]
  task = _mmlu_task(vocabulary, "mmlu_conventions_wr_normalised")
  model = evaluator.make_eval_model(network, params, {"inputs": 400, "targets": 4},
                                    vocabulary.eos_id, batch_size=16)
  kept: list[ScoredOptions] = []
  recording = dataclasses.replace(model, score=lambda ex: kept.append(model.score(ex)) or kept[-1])
  evaluator.evaluate_task(task, recording, EvalConfig(max_examples_per_task=20))
  (scored,) = kept
  assert all(counts == [2, 1, 2, 2] for counts in scored.token_counts)
  summed, normalised = scored.choices(), scored.choices(length_normalize=True)
  assert summed != normalised  # so MMLU is scored unnormalised, as lm-eval's `acc`


def _long_task(vocabulary, name: str, option_scoring: str) -> seqio.Task:
  """Two questions with a long prompt; options "yes" and a long sentence."""
  spec = flan_task.FlanTaskSpec(
      name=name, cluster="conventions", vocabulary=vocabulary, option_scoring=option_scoring,
      records=lambda split: [{"q": f"Once upon a time there was a little girl number {i} who "
                                   "liked to play in the park with her dog every day",
                              "a": "yes"} for i in range(2)],
      templates=(flan_task.Template("{q}. Did she play?", "{a}"),),
      options=("yes", "she went home and slept in her bed all night long"), few_shot=False)
  return seqio.get_mixture_or_task(flan_task.register_flan_task(spec)["zs_noopt"])


@needs_stories
@pytest.mark.parametrize("option_scoring", ["target", "continuation"])
def test_a_long_option_is_cut_counted_and_named_in_a_warning(stories, option_scoring, caplog):
  network, params, vocabulary, _ = stories
  task = _long_task(vocabulary, f"conventions_long_option_{option_scoring}", option_scoring)
  model, seen = _recording(evaluator.make_eval_model(
      network, params, {"inputs": 128, "targets": 6}, vocabulary.eos_id, batch_size=8))
  with caplog.at_level(logging.WARNING):
    _, counts = evaluator.evaluate_task(task, model, EvalConfig(max_examples_per_task=2))
  assert (counts.options, counts.options_cut, counts.rows_cut) == (4, 2, 0)
  warning = next(r.getMessage() for r in caplog.records if task.name in r.getMessage())
  assert "2 of 4 answer options cut at the end" in warning
  long_option = list(vocabulary.encode("she went home and slept in her bed all night long"))
  kept = [option.tolist() for _, option, _ in seen if len(option) == 6]
  expected = (long_option[:5] + [vocabulary.eos_id] if option_scoring == "target"
              else long_option[:6])
  assert kept == [expected, expected]  # a target keeps its EOS, a continuation its first tokens


@needs_stories
def test_a_row_past_the_models_length_loses_its_prompts_front_and_scores_as_that_row(
    stories, caplog):
  network, params, vocabulary, hf = stories
  task = _long_task(vocabulary, "conventions_long_row", "continuation")
  lengths = {"inputs": 128, "targets": 32}  # prompts of 44 tokens, options of 2 and 24
  max_length = 40  # fewer positions than prompt + option
  full, _ = _recording(evaluator.make_eval_model(network, params, lengths, vocabulary.eos_id,
                                                 batch_size=8))
  model, seen = _recording(evaluator.make_eval_model(network, params, lengths, vocabulary.eos_id,
                                                     batch_size=8, max_length=max_length))
  prompts = evaluator._start(task, full, EvalConfig(max_examples_per_task=2)).prompts
  with caplog.at_level(logging.WARNING):
    _, counts = evaluator.evaluate_task(task, model, EvalConfig(max_examples_per_task=2))
  assert counts.rows_cut == 4 and counts.options_cut == 0
  assert any(task.name in r.getMessage() and "4 of 4 option rows longer than the model's "
             "maximum length cut from the left" in r.getMessage() for r in caplog.records)
  for index, (prompt, option, score) in enumerate(seen):
    whole = prompts[index // 2]
    assert len(whole) + len(option) > max_length
    # lm-eval's rule: the option whole, the prompt's last tokens that fit; BOS stays first.
    kept = whole[len(whole) - (max_length - len(option)):]
    np.testing.assert_array_equal(prompt, kept)
    reference = _transformers_log_likelihood(hf, [1, *kept.tolist(), *option.tolist()],
                                             len(option))
    assert score == pytest.approx(reference, abs=1e-4)


def test_a_model_too_short_for_any_option_is_one_clear_error():
  from flan_jax.errors import UserError
  from tiny import TINY_DECODER
  network = family_for(TINY_DECODER)
  with pytest.raises(UserError, match="lower TASK_FEATURE_LENGTHS"):
    evaluator.make_eval_model(network, {}, {"inputs": 8, "targets": 8}, 1, 4, max_length=8)


@needs_stories
def test_the_evaluation_report_says_which_bos_rule_and_option_scoring_made_each_number(
    stories, tmp_path):
  from flan_jax import checkpoint_eval
  _, _, vocabulary, _ = stories
  task = _long_task(vocabulary, "conventions_report", "continuation")
  report = checkpoint_eval.evaluate_checkpoint(
      STORIES, task.name, {"inputs": 64, "targets": 32}, str(tmp_path),
      evaluation=EvalConfig(max_examples_per_task=2, batch_size=8), log_samples=True)
  # log_samples: per example the prompt, each option's score and the likeliest option.
  lines = (tmp_path / "eval" / f"{task.name}_samples" / f"{task.name}.jsonl").read_text()
  samples = [json.loads(line) for line in lines.splitlines()]
  assert len(samples) == 2
  for sample in samples:
    assert sample["inputs"].endswith(". Did she play?") and sample["target"] == ["yes"]
    scores = sample["option_log_likelihoods"]
    assert len(scores) == len(sample["options"]) == 2 and all(s < 0 for s in scores)
    assert sample["output"] == sample["prediction"] == sample["options"][int(np.argmax(scores))]
  assert report["results"][f"{task.name}/accuracy"] == 50.0 * sum(
      s["prediction"] == "yes" for s in samples)
  written = (tmp_path / "eval" / f"{task.name}.json").read_text()
  assert json.loads(written)["scoring"] == report["scoring"] == {
      "bos": "added (id 1)",  # the tokenizer's <s>, which lm-eval adds only if its config says so
      "style": {"flan": [task.name]},  # FlanTaskSpec's default
      "option_scoring": {"continuation": [task.name]}, "length_normalize": False,
      "max_length": 512}  # config.json's max_position_embeddings


def test_an_encoder_decoder_report_says_no_bos():
  from flan_jax.models.t5 import T5Config
  network = family_for(T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8,
                                mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1))
  conventions = evaluator.scoring_conventions(network, ["anything"], EvalConfig())
  assert conventions["bos"].startswith("none") and conventions["option_scoring"] == {
      "target": ["anything"]}


@needs_stories
@pytest.mark.parametrize("max_length", [None, 40])
def test_without_bos_options_score_as_transformers_scores_the_prompt_alone(stories, max_length):
  network, params, vocabulary, hf = stories
  task = _long_task(vocabulary, f"conventions_no_bos_{max_length}", "continuation")
  model, seen = _recording(evaluator.make_eval_model(
      network, params, {"inputs": 128, "targets": 32}, vocabulary.eos_id, batch_size=8,
      max_length=max_length, add_bos=False))
  _, counts = evaluator.evaluate_task(task, model, EvalConfig(max_examples_per_task=2))
  assert model.prompt_prefix == () and len(seen) == 4
  assert counts.rows_cut == (0 if max_length is None else 4)
  for prompt, option, score in seen:
    tokens = [*prompt.tolist(), *option.tolist()]
    # lm-eval without BOS: the window is max_length + 1 tokens, of which the model reads
    # all but the last, and the prompt's first token is not predicted.
    assert max_length is None or len(tokens) == max_length + 1
    assert tokens[0] != 1
    assert score == pytest.approx(_transformers_log_likelihood(hf, tokens, len(option)), abs=1e-4)
  conventions = evaluator.scoring_conventions(network, [task.name], EvalConfig(add_bos=False))
  assert conventions["bos"].startswith("none")

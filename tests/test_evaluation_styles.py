"""MMLU, BBH and GSM8K in two styles: lm-eval's conventions and FLAN's (`_flan`).

What defines FLAN's style, checked against hand computations: an answer option is
scored as a training target, so its score is lm-eval's continuation score plus
log p(EOS | prompt, option) (computed here with transformers); and a generation is
read by FLAN's rule (up to a blank line, stripped, a chain of thought's answer after
its last "answer is") and compared by exact match, where lm-eval cuts at its stop
sequences and extracts with its own filters.
"""

import dataclasses
import os

import numpy as np
import pytest
import seqio

from flan_jax.data import flan_task
from flan_jax.evaluation import evaluator
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax_tasks.library import bbh, gsm8k, mmlu, styles

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
needs_data = pytest.mark.skipif(not os.path.isdir(STORIES), reason=f"no real data at {DATA}")

# (generation, reference, lm-eval's answer, FLAN's answer), by hand. lm-eval (answer-only
# `bbh_fewshot`): cut at "</s>", "Q" or a blank line, nothing stripped. FLAN: up to a
# blank line, stripped.
BBH_DIRECT = [
    (" (B)", "(B)", " (B)", "(B)"),
    ("False \n\nQ: next", "False", "False ", "False"),
    ("(B) Quite sure.", "(B)", "(B) ", "(B) Quite sure."),
    ("Queen of hearts", "Queen of hearts", "", "Queen of hearts"),
    ("(A)\n", "(A)", "(A)\n", "(A)"),
]
# Chain of thought. lm-eval: the first case-sensitive "the answer is ", the rest of that
# line less its last character. FLAN: the last "answer is" in any case, a final period off.
BBH_COT = [
    ("So the answer is (B).", "(B)", "(B)", "(B)"),
    ("The answer is (B).", "(B)", "[invalid]", "(B)"),
    ("So the answer is (A). No, the answer is (B).", "(B)", "(A). No, the answer is (B)", "(B)"),
    ("So the answer is (B)", "(B)", "(B", "(B)"),
    ("Quite simply, the answer is (C).", "(C)", "[invalid]", "(C)"),
    ("So the answer is (B).\n\nQ: another. So the answer is (D).", "(B)", "(B)", "(B)"),
]
# GSM8K: lm-eval's strict-match reads "The answer is N." and ignores commas, "$" and case;
# FLAN's exact match compares the stated answer as written with the reference (comma-free
# as the worked answers write it).
GSM8K = [
    ("5 + 4 = 9. The answer is 9.", "9", "9", "9", True, True),
    ("The answer is 1,234.", "1234", "1,234", "1,234", True, False),
    ("so the answer is 12.", "12", None, "12", False, True),
    ("The answer is $7.", "7", None, "$7", False, False),
    ("10 - 3 = 7.\nQ: What is 2 + 2? The answer is 4.", "7", None, "4", False, False),
]


@pytest.mark.parametrize("generation, reference, lm_eval_answer, flan_answer", BBH_DIRECT)
def test_bbh_answer_only_flan_strips_and_ignores_lm_evals_bare_q(generation, reference,
                                                                 lm_eval_answer, flan_answer):
  assert bbh.direct_postprocessor(generation) == lm_eval_answer
  assert styles.direct_postprocessor(generation) == flan_answer
  assert styles.exact_match([reference], [flan_answer]) == {
      "exact_match": 100.0 * (flan_answer == reference)}


@pytest.mark.parametrize("generation, reference, lm_eval_answer, flan_answer", BBH_COT)
def test_bbh_cot_flan_reads_the_last_answer_in_any_case(generation, reference, lm_eval_answer,
                                                       flan_answer):
  assert bbh.cot_postprocessor(generation) == lm_eval_answer
  assert styles.cot_postprocessor(generation) == flan_answer
  assert styles.cot_postprocessor(reference, is_target=True) == reference


def test_gsm8k_flan_exact_match_against_lm_evals_strict_match():
  generations = [g for g, *_ in GSM8K]
  references = [[r] for _, r, *_ in GSM8K]
  for generation, _, strict, flan, _, _ in GSM8K:
    assert gsm8k.strict_answer(gsm8k.postprocessor(generation)) == strict
    assert styles.cot_postprocessor(generation) == flan
  strict_hits = [hit for *_, hit, _ in GSM8K]
  flan_hits = [hit for *_, hit in GSM8K]
  assert gsm8k.strict_match(references, [gsm8k.postprocessor(g) for g in generations]) == {
      "strict_match": 100.0 * sum(strict_hits) / len(GSM8K)}
  flan_predictions = [styles.cot_postprocessor(g) for g in generations]
  assert styles.exact_match([r for _, r, *_ in GSM8K], flan_predictions) == {
      "exact_match": 100.0 * sum(flan_hits) / len(GSM8K)}
  # The reference as the task hands it over: the worked answer, read as an answer.
  assert styles.cot_postprocessor("16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.",
                                  is_target=True) == "18"


@needs_data
def test_flan_style_mixtures_have_the_same_prompts_and_are_reported_as_flan():
  mmlu.register(DATA), bbh.register(DATA), gsm8k.register(DATA)
  pairs = [("mmlu_anatomy_fs_noopt", "mmlu_anatomy_flan_fs_noopt"),
           ("mmlu_anatomy_zs_noopt", "mmlu_anatomy_flan_zs_noopt"),
           ("bbh_navigate_cot", "bbh_navigate_flan_cot"),
           ("bbh_navigate_zs_noopt", "bbh_navigate_flan_zs_noopt"),
           ("gsm8k_cot", "gsm8k_flan_cot")]
  for lm_eval_task, flan_task_name in pairs:
    ours, theirs = (seqio.get_mixture_or_task(n).source.render("test", 0, 0)
                    for n in (flan_task_name, lm_eval_task))
    assert ours["inputs"] == theirs["inputs"]
    assert flan_task.evaluation_style(flan_task_name) == "flan"
    assert flan_task.evaluation_style(lm_eval_task) == "lm_eval"
  for mixture in ("mmlu_0shot", "mmlu_5shot", "bbh_direct", "bbh_cot", "gsm8k"):
    flan = sorted(t.name for t in seqio.get_mixture_or_task(styles.flan_name(mixture)).tasks)
    assert flan and all(flan_task.evaluation_style(name) == "flan" for name in flan)
  assert flan_task.option_scoring("mmlu_anatomy_flan_fs_noopt") == "target"
  assert flan_task.option_scoring("mmlu_anatomy_fs_noopt") == "continuation"
  from flan_jax.models.families import family_for
  from tiny import TINY_DECODER
  report = evaluator.scoring_conventions(family_for(TINY_DECODER),
                                         ["mmlu_anatomy_fs_noopt", "mmlu_anatomy_flan_fs_noopt"],
                                         EvalConfig())
  assert report["style"] == {"lm_eval": ["mmlu_anatomy_fs_noopt"],
                             "flan": ["mmlu_anatomy_flan_fs_noopt"]}


@needs_data
def test_flan_mmlu_scores_each_letter_with_eos_lm_evals_without():
  import torch
  import transformers
  from flan_jax.data.vocabularies import vocabulary_from_path
  from flan_jax.models import hf_llama
  from flan_jax.models.families import family_for
  config, params = hf_llama.load_hf_checkpoint(STORIES)
  vocabulary = vocabulary_from_path(os.path.join(STORIES, "tokenizer.model"))
  network = family_for(config, bos_id=1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  scores = {}
  for style in ("lm_eval", "flan"):
    spec = mmlu.spec(DATA, "high_school_geography", style)
    spec = dataclasses.replace(spec, name=f"styles_test_{spec.name}", vocabulary=vocabulary)
    task = seqio.get_mixture_or_task(flan_task.register_flan_task(spec)["zs_noopt"])
    model = evaluator.make_eval_model(network, params, {"inputs": 400, "targets": 4},
                                      vocabulary.eos_id, batch_size=8)
    samples = {}
    evaluator.evaluate_tasks([task], model, EvalConfig(split="test", max_examples_per_task=2),
                             samples)
    scores[style] = samples[task.name]
  for lm_eval_record, flan_record in zip(scores["lm_eval"], scores["flan"]):
    prompt = [1, *vocabulary.encode(lm_eval_record["inputs"])]
    for letter, without, with_eos in zip("ABCD", lm_eval_record["option_log_likelihoods"],
                                         flan_record["option_log_likelihoods"]):
      tokens = prompt + list(vocabulary.encode(letter))
      with torch.no_grad():
        log_probs = torch.log_softmax(hf(torch.tensor([tokens])).logits[0].double(), -1).numpy()
      # By hand: each letter token given all before it, then EOS after the letter.
      continuation = sum(log_probs[k - 1, tokens[k]] for k in range(len(prompt), len(tokens)))
      eos = log_probs[len(tokens) - 1, vocabulary.eos_id]
      assert without == pytest.approx(continuation, abs=1e-4)
      assert with_eos == pytest.approx(continuation + eos, abs=1e-4)
    # Each style picks its likeliest option by its own scores.
    for record in (lm_eval_record, flan_record):
      assert record["output"] == "ABCD"[int(np.argmax(record["option_log_likelihoods"]))]

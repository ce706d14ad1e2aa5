"""Metric functions against hand computations and the libraries' documented scores.

Pure Python, no seqio or TensorFlow: the time goes to rouge-score importing NLTK
and SciPy (about 2 s, in the first ROUGE-L test). The library's metric declarations
are checked in test_library_t0_ii_cot_instruct.py, which registers it anyway.
"""

import inspect
import math

import pytest

from flan_jax import metrics
from flan_jax.metrics import (accuracy, bleu, cot_exact_match, extract_cot_answer,
                                         extract_number, normalize_answer, normalized_exact_match,
                                         numeric_match, rouge_l, token_f1)

METRICS = (accuracy, normalized_exact_match, token_f1, rouge_l, bleu, cot_exact_match,
           numeric_match)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_metrics_have_seqios_predict_signature_and_handle_edges(metric):
  # seqio sorts metric functions by their required parameters' names.
  assert list(inspect.signature(metric).parameters) == ["targets", "predictions"]
  assert list(metric([], []).values()) == [0.0]
  with pytest.raises(ValueError, match="1 targets but 2 predictions"):
    metric(["a"], ["a", "b"])


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple,  a day. ", "apple day"),
    ("Theatre and anagrams", "theatre and anagrams"),  # articles only as whole words
    ("the.", ""),  # punctuation goes first, then "the" is a word
    ("U.S.A.", "usa"),
    ("Rock'n'roll", "rocknroll"),
])
def test_squad_normalisation(text, normalized):
  assert normalize_answer(text) == normalized


def test_normalized_exact_match_takes_the_best_reference_and_averages():
  targets = [["Paris", "the City of Paris"], "42", "blue"]
  predictions = ["city of paris.", " 42 ", "Blue whale"]
  assert normalized_exact_match(targets, predictions) == {
      "normalized_exact_match": pytest.approx(200 / 3)}
  # accuracy is unchanged: exact strings, any listed reference
  assert accuracy(targets, ["Paris", "42", "blue"]) == {"accuracy": 100.0}
  assert accuracy(targets, ["paris", "42", "blue"])["accuracy"] == pytest.approx(200 / 3)


def test_token_f1_by_hand():
  # reference -> [cat, sat, on, mat]; prediction -> [cat, sat, down]: 2 in common,
  # precision 2/3, recall 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7.
  assert token_f1(["The cat sat on the mat."], ["A cat sat down"])["token_f1"] == pytest.approx(
      400 / 7)
  # Counts clip: "red" appears twice in the reference, so only two of three match.
  assert token_f1(["red red blue"], ["red red red"])["token_f1"] == pytest.approx(200 / 3)
  # SQuAD 2.0's rule for empty answers (here "the" normalises to nothing).
  assert token_f1(["the"], [""])["token_f1"] == 100.0
  assert token_f1(["cat"], [""])["token_f1"] == 0.0
  assert token_f1([["dog", "cat sat"], "x"], ["cat", "y"])["token_f1"] == pytest.approx(
      100 * (2 / 3) / 2)  # best reference "cat sat": P 1, R 1/2, F1 2/3; then 0


def test_rouge_l_by_hand_from_the_lcs():
  # reference: the cat sat on the mat (6 tokens); prediction: the cat lay on a mat
  # today (7). LCS = the, cat, on, mat (4): P = 4/7, R = 4/6, F = 2PR/(P+R) = 8/13.
  score = rouge_l(["The cat sat on the mat."], ["the cat lay on a mat today"])["rouge_l"]
  assert score == pytest.approx(800 / 13)
  # Porter stemming: cats -> cat, running/runs -> run; words of 3 letters stay.
  # [the, cat, are, run] vs [a, cat, run]: LCS 2, P 2/3, R 2/4, F 4/7.
  assert rouge_l(["the cats are running"], ["a cat runs"])["rouge_l"] == pytest.approx(400 / 7)
  assert rouge_l([["something else", "the cat sat"]], ["The cat sat."])["rouge_l"] == 100.0
  assert rouge_l(["one two"], ["three four"])["rouge_l"] == 0.0


def test_bleu_identical_hand_computed_and_sacrebleus_documented_example():
  assert bleu(["The cat is on the mat."], ["The cat is on the mat."])["bleu"] == pytest.approx(100)
  # Every n-gram matches, the hypothesis is 4 tokens to the reference's 5: BLEU is
  # the brevity penalty alone, exp(1 - 5/4).
  assert bleu(["a b c d e"], ["a b c d"])["bleu"] == pytest.approx(100 * math.exp(-0.25))
  # Examples with different numbers of references: the closest length counts (5 of
  # 5 and 1 for a 4-token hypothesis), so r = 6 + 5 and c = 6 + 4.
  score = bleu(["the cat is on the mat", ["a b c d e", "x"]], ["the cat is on the mat", "a b c d"])
  assert score["bleu"] == pytest.approx(100 * math.exp(1 - 11 / 10))
  # sacrebleu's README: two reference streams, BLEU = 48.53.
  streams = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
             ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
  hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
  targets = [list(references) for references in zip(*streams)]
  assert bleu(targets, hypotheses)["bleu"] == pytest.approx(48.53, abs=0.005)


@pytest.mark.parametrize("text, number", [
    ("$1,234.", 1234.0),
    ("#### 72", 72.0),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", 72.0),
    ("The answer is 72. Then 5 more questions follow.", 72.0),  # after the marker, not last
    ("So the answer is $1,234,567.89.", 1234567.89),
    ("She has 3 apples and 5 pears", 5.0),  # no marker: the last number
    ("It drops to -7 degrees.", -7.0),
    ("1,2,3", 3.0),  # not thousands groups: three numbers
    ("The answer is .5", 0.5),
    ("The answer is unknown, after 12 tries", 12.0),
    ("no digits at all", None),
])
def test_gsm8k_numbers(text, number):
  assert extract_number(text) == number


def test_numeric_match_compares_numbers_not_strings():
  targets = ["#### 1,234", "72", "18", "no number here"]
  predictions = ["So the answer is $1,234.", "The answer is 72.00", "The answer is 81.", "0"]
  assert numeric_match(targets, predictions) == {"numeric_match": 50.0}
  assert numeric_match([["#### 5", "6"]], ["I get 6."])["numeric_match"] == 100.0


def test_cot_answer_extraction_and_match():
  assert extract_cot_answer("The answer is unclear at first. So the answer is no.") == "no."
  assert extract_cot_answer("Reasoning... So the answer is: (C) 42.\n\nQ: next one") == "(C) 42."
  assert extract_cot_answer("  yes ") == "yes"  # a direct answer is taken whole
  targets = ["yes", ["(C)"], "Because of x. So the answer is no.", "Paris"]
  predictions = ["Birds fly. So the Answer is Yes.\nQ: Is ...", "the answer is: (c).",
                 "no", "So the answer is London."]
  assert cot_exact_match(targets, predictions) == {"cot_exact_match": 75.0}


def test_the_module_docstring_names_every_metric():
  for metric in METRICS:
    assert metric.__name__ in metrics.__doc__

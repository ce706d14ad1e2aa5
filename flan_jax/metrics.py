"""Metric functions in seqio's forms: (targets, predictions) -> {name: value}, in percent,
and (targets, scores) -> {name: value} for the reference's log-likelihood.

A leaf module: tasks declare their metrics where they are registered (`data/`) and
evaluation applies them, so both import this and it imports neither.

Which metric for which kind of task (every library task declares its own through
`FlanTaskSpec(metric_fns=...)`):

  task type                                          metric_fns
  classification (answer options; the evaluator      accuracy
    scores these by rank classification)
  short free-form answers (Instruction Induction)    normalized_exact_match
  extractive QA (SQuAD-style spans)                  token_f1, normalized_exact_match
  generation without options (T0, Natural            rouge_l, normalized_exact_match
    Instructions), open-ended (Alpaca, LIMA)
  translation, when n-gram overlap is wanted         bleu
  chain-of-thought ("... So the answer is X.")       cot_exact_match
  GSM8K-style arithmetic (a final number)            numeric_match
  conversations (the final answer of held-out ones)  rouge_l, target_perplexity

A target is one reference string or a list of acceptable references (what the
task postprocessors make of the `references` feature); every metric takes, per
example, the best score over the references (as SQuAD does), then the mean over
examples. ROUGE-L and BLEU come from `rouge-score` and `sacrebleu`, which are
imported on first use: rouge-score pulls in NLTK and SciPy (about 2 s), which a
training job that never scores generations should not pay for.
"""

from collections import Counter
import functools
import math
import re
import string
from typing import Callable, NamedTuple, Sequence

Target = str | Sequence[str]


def accuracy(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match in percent, after the task's postprocessor.

  A target may be a list of acceptable answers (several references): any one counts.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  hits = sum(p in t if isinstance(t, (list, tuple)) else p == t
             for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def strip(text: str, example=None, is_target: bool = False) -> str:
  """A postprocessor: surrounding whitespace never decides correctness."""
  del example, is_target
  return text.strip()


# --- shared helpers


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _references(target: Target) -> list[str]:
  """A target's references as a list; an empty list scores like one empty reference."""
  if isinstance(target, (str, bytes)):
    return [_text(target)]
  return [_text(t) for t in target] or [""]


def _check_lengths(targets: Sequence[Target], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")


def _mean_of_best(targets: Sequence[Target], predictions: Sequence[str],
                  score: Callable[[str, str], float]) -> float:
  """100 x the mean over examples of the best `score(reference, prediction)` per example."""
  _check_lengths(targets, predictions)
  total = sum(max(score(reference, _text(prediction)) for reference in _references(target))
              for target, prediction in zip(targets, predictions))
  return 100.0 * total / max(len(targets), 1)


# --- SQuAD-style exact match and token F1

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation, drop a/an/the, collapse whitespace.

  Punctuation goes before articles, as in SQuAD's script, so "the." still loses "the".
  """
  text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(reference: str, prediction: str) -> float:
  return float(normalize_answer(reference) == normalize_answer(prediction))


def _f1(reference: str, prediction: str) -> float:
  reference_tokens = normalize_answer(reference).split()
  prediction_tokens = normalize_answer(prediction).split()
  if not reference_tokens or not prediction_tokens:
    # SQuAD 2.0's rule: an empty answer is right only against an empty answer.
    return float(reference_tokens == prediction_tokens)
  common = sum((Counter(reference_tokens) & Counter(prediction_tokens)).values())
  if not common:
    return 0.0
  precision, recall = common / len(prediction_tokens), common / len(reference_tokens)
  return 2 * precision * recall / (precision + recall)


def normalized_exact_match(targets: Sequence[Target], predictions: Sequence[str]
                           ) -> dict[str, float]:
  """Exact match after SQuAD normalisation (case, punctuation, articles, spacing)."""
  return {"normalized_exact_match": _mean_of_best(targets, predictions, _exact)}


def token_f1(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD's token F1: bag-of-tokens overlap of the normalised answers."""
  return {"token_f1": _mean_of_best(targets, predictions, _f1)}


# --- ROUGE-L and BLEU (library implementations, so scores compare with published ones)


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _rouge_l(reference: str, prediction: str) -> float:
  return _rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure


def rouge_l(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
  """ROUGE-L F-measure (rouge-score, Porter stemming), best reference per example.

  rouge-score keeps only ASCII letters and digits, so text in other scripts scores 0:
  use exact match for such tasks.
  """
  return {"rouge_l": _mean_of_best(targets, predictions, _rouge_l)}


def bleu(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
  """sacrebleu's corpus BLEU (13a tokenisation, exponential smoothing) over all references."""
  _check_lengths(targets, predictions)
  if not predictions:
    return {"bleu": 0.0}
  import sacrebleu  # pylint: disable=g-import-not-at-top
  references = [_references(target) for target in targets]
  # sacrebleu takes reference *streams* (the i-th reference of every example), with
  # None where an example has fewer references than the most any example has.
  streams = [[refs[i] if i < len(refs) else None for refs in references]
             for i in range(max(len(refs) for refs in references))]
  return {"bleu": float(sacrebleu.corpus_bleu([_text(p) for p in predictions], streams).score)}


# --- chain-of-thought and GSM8K

_ANSWER_IS = "answer is"


def extract_cot_answer(text: str) -> str:
  """The answer after the last "answer is" up to the end of that line, else the whole text.

  Only that line: a model that keeps generating after its answer (a new "Q: ...")
  should not lose the example for it. Trailing punctuation is left to normalisation.
  """
  cut = text.lower().rfind(_ANSWER_IS)
  if cut < 0:
    return text.strip()
  answer = text[cut + len(_ANSWER_IS):].lstrip(" \t\n:")
  return answer.split("\n", 1)[0].strip()


def _cot_exact(reference: str, prediction: str) -> float:
  return _exact(extract_cot_answer(reference), extract_cot_answer(prediction))


def cot_exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
  """Normalised exact match of the answers a chain of thought ends with.

  References are read the same way, so a reference may be a full rationale or the
  bare answer (what the CoT postprocessor leaves).
  """
  return {"cot_exact_match": _mean_of_best(targets, predictions, _cot_exact)}


# "1,234" only with thousands groups, so a list "1,2,3" is not read as 123.
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")
_FINAL_ANSWER = re.compile(r"\banswer is\b|####", re.IGNORECASE)


def extract_number(text: str) -> float | None:
  """GSM8K's final answer: the first number after the last "answer is"/"####", else the last number.

  Commas, a dollar sign and a trailing period are dropped ("$1,234." -> 1234.0);
  None when the text has no number.
  """
  markers = list(_FINAL_ANSWER.finditer(text))
  found = _NUMBER.search(text, markers[-1].end()) if markers else None
  if found is None:
    numbers = _NUMBER.findall(text)
    if not numbers:
      return None
    number = numbers[-1]
  else:
    number = found.group()
  return float(number.replace(",", "").replace("$", ""))


def _numeric(reference: str, prediction: str) -> float:
  expected, predicted = extract_number(reference), extract_number(prediction)
  if expected is None or predicted is None:
    return 0.0
  # Equal numbers written differently ("72" and "72.00") must match; floats round.
  return float(math.isclose(expected, predicted, rel_tol=1e-9, abs_tol=1e-6))


def numeric_match(targets: Sequence[Target], predictions: Sequence[str]) -> dict[str, float]:
  """GSM8K accuracy: the prediction's final number equals the reference's."""
  return {"numeric_match": _mean_of_best(targets, predictions, _numeric)}


# --- score metrics: (targets, scores) -> {name: value}, seqio's other form


class TargetScore(NamedTuple):
  """What the evaluator hands a score metric per example: the reference target's summed
  token log-likelihood given the prompt, and over how many tokens (its EOS included)."""
  log_likelihood: float
  tokens: int


def target_perplexity(targets: Sequence[Target], scores: Sequence[TargetScore]
                      ) -> dict[str, float]:
  """Token-level negative log-likelihood (nats) and perplexity of the reference answers:
  the SFT tools' evaluation loss, over the answer tokens only. Not in percent."""
  del targets
  tokens = sum(score.tokens for score in scores)
  if not tokens:
    return {"target_nll": 0.0, "target_perplexity": 1.0}
  nll = -sum(score.log_likelihood for score in scores) / tokens
  return {"target_nll": nll, "target_perplexity": math.exp(nll)}

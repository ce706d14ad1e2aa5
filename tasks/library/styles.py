"""FLAN's evaluation conventions for the benchmarks that also follow lm-eval's.

MMLU, BBH and GSM8K are registered twice (docs/evaluation_conventions.md, "Two
styles"): in lm-evaluation-harness's conventions (`style="lm_eval"`: mixtures
`mmlu_0shot`, `mmlu_5shot`, `bbh_direct`, `bbh_cot`, `gsm8k`) and in FLAN's
(`style="flan"`: the same names with `_flan`). FLAN-T5 was evaluated with t5x, whose
conventions are:

- answer options are scored as the training targets they would be, with EOS (t5x's
  rank classification), so the score includes log p(EOS | prompt, option);
- a generation lasts until the model's EOS (models finetuned FLAN's way end every
  target with it); here it is also cut at the first blank line, the separator between
  FLAN's few-shot exemplars, where a model that does not stop starts the next one;
- the answer is then the stripped text, or for chain of thought the text after the
  last "answer is" (any case) without a final period (`variants.extract_answer`, the
  library's CoT convention), and it must equal the reference exactly (`exact_match`).

Against lm-eval's: no bare "Q" or "Q:" stop sequence, surrounding whitespace never
decides, and a CoT answer is read after the last "answer is", not the first.
"""

from typing import Callable, Iterable, Mapping

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.variants import extract_answer
from flan_jax.metrics import accuracy
from flan_jax_tasks.library.common import add_mixture_once, register_once

STYLES = ("lm_eval", "flan")

FLAN_SUFFIX = "_flan"  # FLAN-style tasks and mixtures: the lm-eval style's names plus this
EXEMPLAR_SEPARATOR = "\n\n"


def flan_name(name: str) -> str:
  """The FLAN-style twin of an lm-eval-style task or mixture name."""
  return name + FLAN_SUFFIX


def register_in_both_styles(spec: Callable[[str, str], FlanTaskSpec], items: Iterable[str],
                            mixtures: Mapping[str, str]) -> list[str]:
  """Registers `spec(item, style)` for every item in both styles, and per style one
  collection mixture per {variant: lm-eval-style mixture name} (FLAN's named with
  `flan_name`); returns the task mixtures and the collections. Idempotent."""
  items = list(items)
  registered = []
  for style in STYLES:
    names = [register_once(spec(item, style)) for item in items]
    registered += names + [
        add_mixture_once(flan_name(mixture) if style == "flan" else mixture,
                         [f"{name}_{variant}" for name in names])
        for variant, mixture in mixtures.items() if names]
  return registered


def _generated(text: str) -> str:
  return text.split(EXEMPLAR_SEPARATOR, 1)[0]


def direct_postprocessor(text: str, example=None, is_target: bool = False) -> str:
  """An answer-only generation up to the first blank line, stripped; references stripped."""
  del example
  return text.strip() if is_target else _generated(text).strip()


def cot_postprocessor(text: str, example=None, is_target: bool = False) -> str:
  """A chain of thought's stated answer (after the last "answer is"), from the
  generation up to the first blank line; references read the same way."""
  del example
  return extract_answer(text if is_target else _generated(text))


def exact_match(targets, predictions) -> dict[str, float]:
  """Percent of predictions equal, as strings, to their reference (one of them)."""
  return {"exact_match": accuracy(targets, predictions)["accuracy"]}

"""MGSM (multilingual grade-school math), 8-shot chain-of-thought, from DATA_DIR/eval/mgsm.

Files: `mgsm_<lang>.tsv` per language (bn, de, en, es, fr, ja, ru, sw, te, th, zh in the
release), two tab-separated columns `question<TAB>answer_number`, no header.

The prompt (docs/evaluation_conventions.md) is GSM8K's chain of thought in the
"Question: ... Answer: ..." layout of FLAN-T5's and Tulu's (open-instruct's) GSM
evaluation: an instruction line, the eight English exemplars of Wei et al. 2022 (the
gsm8k module's, so both benchmarks prompt alike), each followed by a blank line, then
the question:

    Answer the following questions.

    Question: There are 15 trees in the grove. ...
    Answer: There are 15 trees originally. ... The answer is 6.

    ...

    Question: <question>
    Answer:

The generation is cut at the first stop sequence (a new "Question:"), and its last
number is the answer (gsm8k's `flexible_answer`, lm-eval's "flexible-extract"),
compared with answer_number as gsm8k compares it (commas, "$", a final period
ignored): `flexible_extract`, the accuracy; `numeric_match` is also reported.

One FlanTaskSpec per language registers `mgsm_<lang>_cot` (cluster `arithmetic_cot`),
split "test", and the mixture `mgsm` collects them; `language_mean` averages over languages.
"""

import functools
import logging
import os

from flan_jax.data.flan_task import FlanTaskSpec, strip_postprocessor
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import numeric_match
from flan_jax_tasks.library.bbh import cut_at_stop_sequences
from flan_jax_tasks.library.common import add_mixture_once, register_once, size_weighted_mean
from flan_jax_tasks.library.gsm8k import LM_EVAL_EXEMPLARS, flexible_extract

ROOT = os.path.join("eval", "mgsm")
PREFIX, SUFFIX = "mgsm_", ".tsv"
NAME = "mgsm"
CLUSTER = "arithmetic_cot"
INSTRUCTION = "Answer the following questions.\n\n"
EXEMPLAR_END = "\n\n"
STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
TEMPLATE = Template("{prompt}Question: {question}\nAnswer:", "The answer is {answer_number}.")


def languages(data_dir: str) -> list[str]:
  """Language codes with a `mgsm_<lang>.tsv` (a directory listing, no reads)."""
  folder = os.path.join(data_dir, ROOT)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(n[len(PREFIX):-len(SUFFIX)] for n in names
                if n.startswith(PREFIX) and n.endswith(SUFFIX))


@functools.lru_cache(maxsize=None)
def prompt() -> str:
  """The instruction and the eight exemplars, each "Question: ...\\nAnswer: ...", blank line."""
  return INSTRUCTION + "".join(f"Question: {q}\nAnswer: {a}{EXEMPLAR_END}"
                               for q, a in LM_EVAL_EXEMPLARS)


def load(data_dir: str, language: str, split: str) -> list[dict]:
  del split  # "test", the only one
  path = os.path.join(data_dir, ROOT, f"{PREFIX}{language}{SUFFIX}")
  rows = read_records(path, fields=("question", "answer_number"), format="tsv",
                      has_header=False, column_names=("question", "answer_number")).records
  text = prompt()
  return [{"question": row["question"].strip(), "answer_number": row["answer_number"].strip(),
           "answers": [row["answer_number"].strip()], "prompt": text} for row in rows]


def postprocessor(text: str, example=None, is_target: bool = False):
  """The generation up to the first stop sequence; targets: answer_number."""
  if is_target:
    return strip_postprocessor(text, example, is_target=True)
  return cut_at_stop_sequences(text, STOP_SEQUENCES)


def spec(data_dir: str, language: str) -> FlanTaskSpec:
  return FlanTaskSpec(
      name=f"{NAME}_{language}", cluster=CLUSTER,
      records=functools.partial(load, data_dir, language), templates=(),
      cot_templates=(TEMPLATE,), splits=("test",), few_shot=False, target_field="answers",
      metric_fns=(flexible_extract, numeric_match), postprocess_fns={"cot": postprocessor})


def language_mean(results: dict[str, float], languages_: list[str],
                  metric: str = "flexible_extract") -> float:
  """The plain mean over languages of "mgsm_<lang>_cot/<metric>" (MGSM's reported average)."""
  keys = [f"{NAME}_{language}_cot/{metric}" for language in languages_]
  return size_weighted_mean(results, dict.fromkeys(keys, 1), "language")


def register(data_dir: str) -> list[str]:
  """Registers each language and the `mgsm` mixture when the TSVs are there. Idempotent."""
  found = languages(data_dir)
  if not found:
    logging.warning("MGSM skipped: no %s<lang>%s files in %s; put the MGSM TSVs there to "
                    "evaluate it.", PREFIX, SUFFIX, os.path.join(data_dir, ROOT))
    return []
  names = [register_once(spec(data_dir, language)) for language in found]
  return names + [add_mixture_once(NAME, [f"{name}_cot" for name in names])]

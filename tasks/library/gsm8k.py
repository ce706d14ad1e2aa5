"""GSM8K's test set, 8-shot chain-of-thought as lm-evaluation-harness's `gsm8k_cot`, from DATA_DIR/eval/gsm8k.

Files: `test.jsonl` (and `train.jsonl`) of `{"question", "answer"}`, where the answer
is a worked solution with calculator annotations `<<48/2=24>>` and a last line
`#### N`. Optionally `cot_exemplars.jsonl`: the few-shot exemplars, one
`{"question", "target"}` per line, the target a worked answer ending "The answer is N."
(put lm-eval's eight chain-of-thought exemplars there to reproduce its prompt exactly).

The prompt (docs/evaluation_conventions.md): eight exemplars, each "Q: <question>\\nA:
<worked answer>" followed by a blank line, then "Q: <question>\\nA:". The exemplars
are `cot_exemplars.jsonl`'s when it exists, else the first eight problems of
`train.jsonl` in file order, each written as its solution without the annotations,
steps joined into one paragraph, and "The answer is N." (the form lm-eval's
exemplars end in). Without either file the prompt is zero-shot.

One FlanTaskSpec, split "test" only, registers `gsm8k_cot` (cluster
`arithmetic_cot`) and the mixture `gsm8k`. The target is the record's worked answer;
the references are the text after "####". The generation is cut at the first of
lm-eval's stop sequences (`STOP_SEQUENCES`), then scored three ways:

    numeric_match     our extraction: the first number after the last "answer is"
                      (else the last number), compared as a number
    strict_match      lm-eval's "strict-match": the number in "The answer is N."
    flexible_extract  lm-eval's "flexible-extract": the last number in the text

the last two compared as lm-eval does (case, commas, "$" and a final period ignored).
"""

import functools
import os
import re

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, strip_postprocessor
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import numeric_match
from flan_jax_tasks.library.bbh import cut_at_stop_sequences
from flan_jax_tasks.library.common import register_once

ROOT = os.path.join("eval", "gsm8k")
EXEMPLARS_FILE = "cot_exemplars.jsonl"
NAME = "gsm8k"
CLUSTER = "arithmetic_cot"
SHOTS = 8
STOP_SEQUENCES = ("Q:", "</s>", "<|im_end|>")  # lm-eval's `until` for gsm8k_cot
EXEMPLAR_END = "\n\n"
# `prompt` is the exemplars, each ending in a blank line.
TEMPLATE = Template("{prompt}Q: {question}\nA:", "{worked_answer}")

_ANNOTATION = re.compile(r"<<[^>]*>>")
# lm-eval's two extractions, and what its exact match ignores before comparing.
_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))


def solution(answer: str, where: str = "") -> tuple[str, str]:
  """(rationale, final answer) of a GSM8K answer "<steps>\\n#### N".

  The rationale is the steps without calculator annotations, each ended with a
  period, in one paragraph; the final answer is the text after "####", as written.
  """
  steps, found, final = answer.rpartition("####")
  if not found or not final.strip():
    raise ValueError(f"{where}: the answer does not end in '#### N': {answer[-60:]!r}")
  lines = [line.strip() for line in _ANNOTATION.sub("", steps).splitlines() if line.strip()]
  lines = [line if line[-1] in ".!?" else line + "." for line in lines]
  return " ".join(lines), final.strip()


def _read(path: str, limit: int | None = None) -> list[dict]:
  rows = read_records(path, fields=("question", "answer")).records[:limit]
  records = []
  for index, row in enumerate(rows):
    rationale, final = solution(row["answer"], f"{path}, record {index}")
    records.append({"question": row["question"].strip(), "final_answers": [final],
                    "worked_answer": f"{rationale} The answer is {final.replace(',', '')}."})
  return records


def exemplars(data_dir: str) -> list[tuple[str, str]]:
  """(question, worked answer) of the few-shot exemplars, in order (see the module docstring)."""
  given = os.path.join(data_dir, ROOT, EXEMPLARS_FILE)
  if tf.io.gfile.exists(given):
    rows = read_records(given, fields=("question", "target")).records
    return [(r["question"].strip(), r["target"].strip()) for r in rows[:SHOTS]]
  train = os.path.join(data_dir, ROOT, "train.jsonl")
  if tf.io.gfile.exists(train):
    return [(r["question"], r["worked_answer"]) for r in _read(train, SHOTS)]
  return []


@functools.lru_cache(maxsize=None)
def prompt(data_dir: str) -> str:
  """The exemplars as the prompt's prefix, each "Q: ...\\nA: ..." and a blank line."""
  return "".join(f"Q: {q}\nA: {a}{EXEMPLAR_END}" for q, a in exemplars(data_dir))


def load(data_dir: str, split: str) -> list[dict]:
  del split  # "test", the only one
  records = _read(os.path.join(data_dir, ROOT, "test.jsonl"))
  text = prompt(data_dir)
  return [{**record, "prompt": text} for record in records]


def postprocessor(text: str, example=None, is_target: bool = False):
  """The generation up to the first stop sequence; targets: the references (the text after ####)."""
  if is_target:
    return strip_postprocessor(text, example, is_target=True)
  return cut_at_stop_sequences(text, STOP_SEQUENCES)


def _lm_eval_normal_form(text: str) -> str:
  for pattern in _IGNORED:
    text = pattern.sub("", text)
  return text.lower()


def strict_answer(text: str) -> str | None:
  """The number in the first "The answer is N." (lm-eval's strict-match), or None."""
  match = _STRICT.search(text)
  return match.group(1).strip() if match else None


def flexible_answer(text: str) -> str | None:
  """The last number-like run of the text (lm-eval's flexible-extract), or None."""
  matches = _FLEXIBLE.findall(text)
  if not matches:
    return None
  return next(group for group in matches[-1] if group).strip()


def _lm_eval_exact_match(extract, targets, predictions) -> float:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  hits = 0
  for target, prediction in zip(targets, predictions):
    references = target if isinstance(target, (list, tuple)) else [target]
    answer = extract(prediction)
    hits += answer is not None and any(
        _lm_eval_normal_form(answer) == _lm_eval_normal_form(r) for r in references)
  return 100.0 * hits / max(len(targets), 1)


def strict_match(targets, predictions) -> dict[str, float]:
  return {"strict_match": _lm_eval_exact_match(strict_answer, targets, predictions)}


def flexible_extract(targets, predictions) -> dict[str, float]:
  return {"flexible_extract": _lm_eval_exact_match(flexible_answer, targets, predictions)}


def register(data_dir: str) -> list[str]:
  """Registers gsm8k_cot when test.jsonl is there; returns its mixture. Idempotent."""
  if not os.path.isfile(os.path.join(data_dir, ROOT, "test.jsonl")):
    return []
  mixture = register_once(FlanTaskSpec(
      name=NAME, cluster=CLUSTER, records=functools.partial(load, data_dir), templates=(),
      cot_templates=(TEMPLATE,), splits=("test",), few_shot=False, target_field="final_answers",
      metric_fns=(numeric_match, strict_match, flexible_extract),
      postprocess_fns={"cot": postprocessor}))
  return [mixture]

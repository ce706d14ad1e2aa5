"""GSM8K's test set as a chain-of-thought evaluation task, from DATA_DIR/eval/gsm8k.

Files: `test.jsonl` (and `train.jsonl`) of `{"question", "answer"}`, where the answer
is a worked solution with calculator annotations `<<48/2=24>>` and a last line
`#### N`. A record's rationale is the solution without the annotations (each step
on its line, ended with a period), and its answer N without thousands commas; the
target is "<rationale> So the answer is N.".

The prompt is an instruction of ours, then SHOTS worked exemplars, the first SHOTS
problems of `train.jsonl` written the same way ("Q: ...\\nA: <rationale> So the
answer is N."), then "Q: <question>\\nA:". Fixed exemplars, as in the CoT papers,
keep scores comparable between runs; without `train.jsonl` the prompt is zero-shot
CoT (the instruction alone).

One FlanTaskSpec, split "test" only, registers `gsm8k_cot` (cluster
`arithmetic_cot`) and the mixture `gsm8k`. The CoT postprocessor reads the answer
after the last "answer is" and `numeric_accuracy` compares it as a number, so
"$1,200." matches 1200.
"""

import decimal
import functools
import os
import re
from typing import Sequence

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax_tasks.library.common import register_once

ROOT = os.path.join("eval", "gsm8k")
NAME = "gsm8k"
CLUSTER = "arithmetic_cot"
SHOTS = 8
INSTRUCTION = "Solve each math word problem step by step, then state the final number."
TEMPLATE = Template("{prompt}\n\nQ: {question}\nA:", "{rationale} So the answer is {answer}.")

_ANNOTATION = re.compile(r"<<[^>]*>>")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def solution(answer: str, where: str = "") -> tuple[str, str]:
  """(rationale, N) of a GSM8K answer "<steps>\\n#### N"."""
  steps, found, final = answer.rpartition("####")
  if not found or not final.strip():
    raise ValueError(f"{where}: the answer does not end in '#### N': {answer[-60:]!r}")
  lines = [line.strip() for line in _ANNOTATION.sub("", steps).splitlines() if line.strip()]
  lines = [line if line[-1] in ".!?" else line + "." for line in lines]
  return "\n".join(lines), final.strip().replace(",", "")


def as_number(text: str) -> decimal.Decimal | None:
  """The last number in `text` ("$1,200." -> 1200), or None when there is none."""
  numbers = _NUMBER.findall(text.replace("$", ""))
  if not numbers:
    return None
  return decimal.Decimal(numbers[-1].replace(",", ""))


def numeric_accuracy(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]
                     ) -> dict[str, float]:
  """Percent of predictions whose last number equals a reference's (exact decimal match)."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  hits = 0
  for target, prediction in zip(targets, predictions):
    references = target if isinstance(target, (list, tuple)) else [target]
    value = as_number(prediction)
    hits += value is not None and any(as_number(r) == value for r in references)
  return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def _read(path: str, limit: int | None = None) -> list[dict]:
  rows = read_records(path, fields=("question", "answer")).records[:limit]
  records = []
  for index, row in enumerate(rows):
    rationale, answer = solution(row["answer"], f"{path}, record {index}")
    records.append({"question": row["question"].strip(), "rationale": rationale, "answer": answer})
  return records


@functools.lru_cache(maxsize=None)
def prompt(data_dir: str) -> str:
  """The instruction and the fixed exemplars from train.jsonl (when it is there)."""
  train = os.path.join(data_dir, ROOT, "train.jsonl")
  shots = _read(train, SHOTS) if tf.io.gfile.exists(train) else []
  return "\n\n".join([INSTRUCTION] + [
      f"Q: {s['question']}\nA: {s['rationale']} So the answer is {s['answer']}." for s in shots])


def load(data_dir: str, split: str) -> list[dict]:
  del split  # "test", the only one
  records = _read(os.path.join(data_dir, ROOT, "test.jsonl"))
  text = prompt(data_dir)
  return [{**record, "prompt": text} for record in records]


def register(data_dir: str) -> list[str]:
  """Registers gsm8k_cot when test.jsonl is there; returns its mixture. Idempotent."""
  if not os.path.isfile(os.path.join(data_dir, ROOT, "test.jsonl")):
    return []
  return [register_once(FlanTaskSpec(
      name=NAME, cluster=CLUSTER, records=functools.partial(load, data_dir), templates=(),
      cot_templates=(TEMPLATE,), splits=("test",), few_shot=False,
      metric_fns=(numeric_accuracy,)))]

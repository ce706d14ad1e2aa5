"""GSM8K's test set, 8-shot chain-of-thought as lm-evaluation-harness's `gsm8k_cot`, from DATA_DIR/eval/gsm8k.

Files: `test.jsonl` (and `train.jsonl`, not used here) of `{"question", "answer"}`,
where the answer is a worked solution with calculator annotations `<<48/2=24>>` and a
last line `#### N`. Optionally `cot_exemplars.jsonl`: other few-shot exemplars, one
`{"question", "target"}` per line, the target a worked answer ending "The answer is N.".

The prompt (docs/evaluation_conventions.md) is lm-eval's: eight exemplars, each
"Q: <question>\nA: <worked answer>" followed by a blank line, then "Q: <question>\nA:".
The exemplars are lm-eval's `gsm8k_cot` ones (`LM_EVAL_EXEMPLARS`, the eight
chain-of-thought exemplars of Wei et al. 2022, "There are 15 trees in the grove..."),
the same for every question, or `cot_exemplars.jsonl`'s first eight when that file exists.

One FlanTaskSpec, split "test" only, registers `gsm8k_cot` (cluster
`arithmetic_cot`) and the mixture `gsm8k`; its FLAN-style twin (`styles`) registers
`gsm8k_flan_cot` and the mixture `gsm8k_flan`. The target is the record's worked answer;
the references are the text after "####". The generation is cut at the first of
lm-eval's stop sequences (`STOP_SEQUENCES`), then scored three ways:

    numeric_match     our extraction: the first number after the last "answer is"
                      (else the last number), compared as a number
    strict_match      lm-eval's "strict-match": the number in "The answer is N."
    flexible_extract  lm-eval's "flexible-extract": the last number in the text

the last two compared as lm-eval does (case, commas, "$" and a final period ignored).
"""

import functools
import logging
import os
import re

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, strip_postprocessor
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import numeric_match
from flan_jax_tasks.library import styles
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

# lm-eval's gsm8k-cot.yaml `fewshot_config.samples` (sampler first_n, all eight used):
# (question, target), joined as "Q: <question>\nA:" + " " + target + "\n\n".
LM_EVAL_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After "
     "they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So "
     "there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
     "parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
     "left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
     "20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
     "toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
     "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
     "losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
     "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)

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


def _read(path: str) -> list[dict]:
  rows = read_records(path, fields=("question", "answer")).records
  records = []
  for index, row in enumerate(rows):
    rationale, final = solution(row["answer"], f"{path}, record {index}")
    records.append({"question": row["question"].strip(), "final_answers": [final],
                    "worked_answer": f"{rationale} The answer is {final.replace(',', '')}."})
  return records


def exemplars(data_dir: str) -> list[tuple[str, str]]:
  """(question, worked answer) of the few-shot exemplars, in order: `cot_exemplars.jsonl`'s
  first eight when the file exists, else lm-eval's (`LM_EVAL_EXEMPLARS`)."""
  given = os.path.join(data_dir, ROOT, EXEMPLARS_FILE)
  if not tf.io.gfile.exists(given):
    return list(LM_EVAL_EXEMPLARS)
  rows = read_records(given, fields=("question", "target")).records
  if not rows:
    raise ValueError(f"{given} has no exemplars; add {SHOTS} lines of "
                     '{"question": ..., "target": "... The answer is N."} or remove the file.')
  if len(rows) > SHOTS:
    logging.warning("%s: %d exemplars, only the first %d are used (lm-eval's %d-shot); %d ignored.",
                    given, len(rows), SHOTS, SHOTS, len(rows) - SHOTS)
  return [(r["question"].strip(), r["target"].strip()) for r in rows[:SHOTS]]


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


def spec(data_dir: str, style: str = "lm_eval") -> FlanTaskSpec:
  """`gsm8k_cot` in lm-eval's conventions, or with style="flan" `gsm8k_flan_cot` in
  FLAN's: the same prompt; the answer after the last "answer is" of the generation up
  to EOS or a blank line, equal to the reference's (comma-free, as the worked answers
  write it) as a string (`styles`)."""
  if style == "flan":
    return FlanTaskSpec(
        name=styles.flan_name(NAME), cluster=CLUSTER, records=functools.partial(load, data_dir),
        templates=(), cot_templates=(TEMPLATE,), splits=("test",), few_shot=False,
        metric_fns=(styles.exact_match,), postprocess_fns={"cot": styles.cot_postprocessor},
        style="flan")
  return FlanTaskSpec(
      name=NAME, cluster=CLUSTER, records=functools.partial(load, data_dir), templates=(),
      cot_templates=(TEMPLATE,), splits=("test",), few_shot=False, target_field="final_answers",
      metric_fns=(numeric_match, strict_match, flexible_extract),
      postprocess_fns={"cot": postprocessor}, style="lm_eval")


def register(data_dir: str) -> list[str]:
  """Registers gsm8k_cot and gsm8k_flan_cot when test.jsonl is there; returns their
  mixtures (`gsm8k`, `gsm8k_flan`). Idempotent."""
  if not os.path.isfile(os.path.join(data_dir, ROOT, "test.jsonl")):
    return []
  return [register_once(spec(data_dir, style)) for style in styles.STYLES]

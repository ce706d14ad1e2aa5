"""BIG-Bench Hard's 27 tasks, 3-shot answer-only and chain-of-thought, as lm-evaluation-harness runs them.

Files: `bbh/<task>.json` (`{"examples": [{"input", "target"}]}`) and
`cot-prompts/<task>.txt`, the published 3-shot prompt: a canary line, "-----", a
one-line task description, then three exemplars "Q: ...\\nA: Let's think step by
step.\\n<rationale> So the answer is <X>." separated by blank lines. The exemplars
are the dataset's, used as they are; the prompts around them follow lm-eval's
`bbh_fewshot` and `bbh_cot_fewshot` (docs/evaluation_conventions.md):

    bbh_<task>_zs_noopt  answer-only: "<description>\\n\\n", each exemplar as
                         "Q: <input>\\nA: <X>\\n\\n" (X read from its rationale),
                         then "Q: <input>\\nA:"; the target is the answer
    bbh_<task>_cot       "<description>\\n\\n", each exemplar as "Q: <input>\\nA:
                         Let's think step by step.\\n<rationale>\\n\\n", then "Q:
                         <input>\\nA: Let's think step by step.\\n"; the target is
                         the answer (the test set has no rationales)

plus a mixture `bbh_<task>`; `bbh_direct` and `bbh_cot` collect every task. In
FLAN's style (`styles`) the same prompts are registered as `bbh_<task>_flan_{zs_noopt,cot}`,
collected by `bbh_direct_flan` and `bbh_cot_flan`. Both
are 3-shot although the framework adds no exemplars ("zs" in the name says only
that). Cluster: `bbh`.

Scoring, both variants: the greedy generation is cut at the first of lm-eval's stop
sequences (`STOP_SEQUENCES`, among them a bare "Q"), as lm-eval stops generating
there. Answer-only takes the cut text as it is, whitespace included (`bbh_fewshot`
has no filter): "False " and "(A)\n" do not equal "False" and "(A)". CoT applies
lm-eval's `get-answer` filter: what follows the first "the answer is " up to, not
including, the last character of that line, stripped ("... the answer is (B)." gives
"(B)"), and "[invalid]" when the phrase is missing. `exact_match` then requires the
string to equal the target exactly: no case or punctuation normalisation, which
would make Dyck-language answers (all brackets) empty and "-12" equal to "12".
"""

import functools
import os
import re
from typing import Sequence

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, strip_postprocessor
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import accuracy
from flan_jax_tasks.library import styles
from flan_jax_tasks.library.common import size_weighted_mean

ROOT = os.path.join("eval", "bbh")
CLUSTER = "bbh"
COT_CUE = "Let's think step by step."
MIXTURES = {"zs_noopt": "bbh_direct", "cot": "bbh_cot"}  # variant -> collection mixture
# lm-eval's `until` for both BBH variants; "</s>" matters only to a tokenizer that
# decodes its EOS as text (ours stop at the EOS id).
STOP_SEQUENCES = ("</s>", "Q", "\n\n")
EXEMPLAR_END = "\n\n"

# The prompt fields end in "\n\n" (see `prompts`).
DIRECT_TEMPLATE = Template("{direct_prompt}Q: {input}\nA:", "{target}")
COT_TEMPLATE = Template("{cot_prompt}Q: {input}\nA: " + COT_CUE + "\n", "{target}")

# lm-eval's `get-answer` filter (bbh cot_fewshot): the first "the answer is " followed
# by the rest of that line less its last character (the period); case-sensitive. Its
# fallback when nothing matches is INVALID.
_COT_ANSWER = re.compile(r"(?<=the answer is )(.*)(?=.)")
INVALID = "[invalid]"


def tasks(data_dir: str) -> list[str]:
  """Tasks with both an examples file and a CoT prompt (directory listings only)."""
  def listed(folder: str, suffix: str) -> set[str]:
    path = os.path.join(data_dir, ROOT, folder)
    names = os.listdir(path) if os.path.isdir(path) else []
    return {n[:-len(suffix)] for n in names if n.endswith(suffix)}
  return sorted(listed("bbh", ".json") & listed("cot-prompts", ".txt"))


def cut_at_stop_sequences(text: str, stops: Sequence[str]) -> str:
  """`text` up to the first occurrence of any stop sequence (what stopping there generates)."""
  for stop in stops:
    text = text.split(stop, 1)[0]
  return text


def cot_answer(text: str) -> str:
  """The answer a chain of thought states, read as lm-eval reads it (stripped); INVALID
  ("[invalid]", lm-eval's fallback) when it states none."""
  match = _COT_ANSWER.search(text)
  return match.group(1).strip() if match else INVALID


def parse_cot_prompt(text: str, path: str = "<prompt>") -> tuple[str, list[tuple[str, str]]]:
  """(description, [(question, rationale), ...]) of a BBH CoT prompt file.

  The rationale is the exemplar's answer after "Let's think step by step.\\n", ending
  in "So the answer is <X>.".
  """
  _, separator, body = text.partition("\n-----\n")
  body = (body if separator else text).strip()
  description, *shots = body.split("\n\nQ: ")
  if description.startswith("Q: "):  # a prompt without a description line
    description, shots = "", [description[3:], *shots]
  exemplars = []
  for shot in shots:
    question, found, answer = shot.partition("\nA: ")
    rationale = answer.strip().removeprefix(COT_CUE).strip()
    if not found or cot_answer(rationale) in ("", INVALID):
      raise ValueError(f"{path}: an exemplar lacks 'A: ... the answer is X.': {shot[:80]!r}")
    exemplars.append((question.strip(), rationale))
  if not exemplars:
    raise ValueError(f"{path}: no 'Q: ... A: ...' exemplars after the '-----' line.")
  return description.strip(), exemplars


@functools.lru_cache(maxsize=None)
def prompts(data_dir: str, task: str) -> tuple[str, str]:
  """(answer-only, CoT) prompt prefixes of a task: description and exemplars, each ending "\\n\\n"."""
  path = os.path.join(data_dir, ROOT, "cot-prompts", f"{task}.txt")
  with tf.io.gfile.GFile(path, "r") as f:
    description, exemplars = parse_cot_prompt(f.read(), path)
  head = description + EXEMPLAR_END if description else ""
  direct = "".join(f"Q: {q}\nA: {cot_answer(r)}{EXEMPLAR_END}" for q, r in exemplars)
  cot = "".join(f"Q: {q}\nA: {COT_CUE}\n{r}{EXEMPLAR_END}" for q, r in exemplars)
  return head + direct, head + cot


def load(data_dir: str, task: str, split: str) -> list[dict]:
  del split  # "test", the only one
  direct, cot = prompts(data_dir, task)
  path = os.path.join(data_dir, ROOT, "bbh", f"{task}.json")
  rows = read_records(path, format="json", fields=("input", "target"),
                      json_records_key="examples").records
  return [{"input": row["input"], "target": row["target"].strip(), "direct_prompt": direct,
           "cot_prompt": cot} for row in rows]


def direct_postprocessor(text: str, example=None, is_target: bool = False):
  """Answer-only: the generation up to the first stop sequence, not stripped (lm-eval's
  `bbh_fewshot` compares it as it is); targets: the references."""
  if is_target:
    return strip_postprocessor(text, example, is_target=True)
  return cut_at_stop_sequences(text, STOP_SEQUENCES)


def cot_postprocessor(text: str, example=None, is_target: bool = False):
  """CoT: the answer stated before the first stop sequence; targets: the references."""
  if is_target:
    return strip_postprocessor(text, example, is_target=True)
  return cot_answer(cut_at_stop_sequences(text, STOP_SEQUENCES))


def exact_match(targets, predictions) -> dict[str, float]:
  """Percent of predictions equal, as strings, to one of their references (lm-eval's exact_match)."""
  return {"exact_match": accuracy(targets, predictions)["accuracy"]}


def spec(data_dir: str, task: str, style: str = "lm_eval") -> FlanTaskSpec:
  """The task's two variants in lm-eval's conventions, or with style="flan" in FLAN's
  (`bbh_<task>_flan`: the same prompts; the generation up to EOS or a blank line,
  stripped, the CoT answer after the last "answer is"; see `styles`)."""
  if style == "flan":
    name, metric = styles.flan_name(f"bbh_{task}"), styles.exact_match
    postprocess = {"zs_noopt": styles.direct_postprocessor, "cot": styles.cot_postprocessor}
  else:
    name, metric = f"bbh_{task}", exact_match
    postprocess = {"zs_noopt": direct_postprocessor, "cot": cot_postprocessor}
  return FlanTaskSpec(
      name=name, cluster=CLUSTER, records=functools.partial(load, data_dir, task),
      templates=(DIRECT_TEMPLATE,), cot_templates=(COT_TEMPLATE,), splits=("test",),
      few_shot=False, metric_fns=(metric,), postprocess_fns=postprocess, style=style)


def example_weighted_mean(results: dict[str, float], data_dir: str, variant: str = "cot",
                          metric: str = "exact_match") -> float:
  """lm-eval's `bbh_cot_fewshot` / `bbh_fewshot` score: per-task results
  ("bbh_<task>_<variant>/<metric>", as the evaluator writes them) averaged with each
  task's example count as its weight. Meaningful only when every example was evaluated.
  """
  weights = {f"bbh_{task}_{variant}/{metric}": len(load(data_dir, task, "test"))
             for task in tasks(data_dir)}
  return size_weighted_mean(results, weights, "task")


def register(data_dir: str) -> list[str]:
  """Registers each task and the collections, in both styles; returns the mixtures.
  Idempotent."""
  return styles.register_in_both_styles(lambda task, style: spec(data_dir, task, style),
                                        tasks(data_dir), MIXTURES)

"""BIG-Bench Hard's 27 tasks, answer-only and chain-of-thought, from DATA_DIR/eval/bbh.

Files: `bbh/<task>.json` (`{"examples": [{"input", "target"}]}`) and
`cot-prompts/<task>.txt`, the published 3-shot prompt: a canary line, "-----", a
one-line task description, then three exemplars "Q: ...\\nA: Let's think step by
step.\\n<rationale> So the answer is <X>." separated by blank lines. That prompt is
data from the dataset, used as-is; we write no wording here beyond "Q:"/"A:".

Per task, one FlanTaskSpec with a single split "test" and no framework few-shot
(the exemplars are fixed by the dataset, so the records loader puts them into
fields) registers:

    bbh_<task>_zs_noopt  direct: the description and the three exemplars with their
                         rationales cut to "A: <X>" (BBH's answer-only prompting),
                         then "Q: <input>\\nA:"; the target is <X>
    bbh_<task>_cot       the whole CoT prompt, then "Q: <input>\\nA: Let's think
                         step by step."; the target is "So the answer is <X>." (the
                         test set has no rationales) and the postprocessor scores the
                         answer `extract_answer` reads after the last "answer is"

plus a mixture `bbh_<task>`; `bbh_direct` and `bbh_cot` collect every task. Direct
is 3-shot rather than 0-shot because that is the protocol BBH results are reported
under; "zs" in the name only says the framework adds no exemplars. Cluster: `bbh`.
"""

import functools
import os

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.data.variants import extract_answer
from flan_jax_tasks.library.common import add_mixture_once, register_once

ROOT = os.path.join("eval", "bbh")
CLUSTER = "bbh"
COT_CUE = "Let's think step by step."
MIXTURES = {"zs_noopt": "bbh_direct", "cot": "bbh_cot"}  # variant -> collection mixture

DIRECT_TEMPLATE = Template("{direct_prompt}\n\nQ: {input}\nA:", "{target}")
COT_TEMPLATE = Template("{cot_prompt}\n\nQ: {input}\nA: " + COT_CUE, "So the answer is {target}.")


def tasks(data_dir: str) -> list[str]:
  """Tasks with both an examples file and a CoT prompt (directory listings only)."""
  def listed(folder: str, suffix: str) -> set[str]:
    path = os.path.join(data_dir, ROOT, folder)
    names = os.listdir(path) if os.path.isdir(path) else []
    return {n[:-len(suffix)] for n in names if n.endswith(suffix)}
  return sorted(listed("bbh", ".json") & listed("cot-prompts", ".txt"))


def parse_cot_prompt(text: str, path: str = "<prompt>") -> tuple[str, list[tuple[str, str]]]:
  """(description, [(question, chain-of-thought answer), ...]) of a BBH CoT prompt file."""
  _, separator, body = text.partition("\n-----\n")
  body = (body if separator else text).strip()
  description, *shots = body.split("\n\nQ: ")
  if description.startswith("Q: "):  # a prompt without a description line
    description, shots = "", [description[3:], *shots]
  exemplars = []
  for shot in shots:
    question, found, answer = shot.partition("\nA: ")
    if not found or "answer is" not in answer:
      raise ValueError(f"{path}: an exemplar lacks 'A: ... So the answer is X.': {shot[:80]!r}")
    exemplars.append((question.strip(), answer.strip()))
  if not exemplars:
    raise ValueError(f"{path}: no 'Q: ... A: ...' exemplars after the '-----' line.")
  return description.strip(), exemplars


def _join(description: str, shots: list[str]) -> str:
  return "\n\n".join(([description] if description else []) + shots)


@functools.lru_cache(maxsize=None)
def prompts(data_dir: str, task: str) -> tuple[str, str]:
  """(direct prompt, CoT prompt) of a task: its description and three exemplars."""
  path = os.path.join(data_dir, ROOT, "cot-prompts", f"{task}.txt")
  with tf.io.gfile.GFile(path, "r") as f:
    description, exemplars = parse_cot_prompt(f.read(), path)
  direct = [f"Q: {q}\nA: {extract_answer(a)}" for q, a in exemplars]
  cot = [f"Q: {q}\nA: {a}" for q, a in exemplars]
  return _join(description, direct), _join(description, cot)


def load(data_dir: str, task: str, split: str) -> list[dict]:
  del split  # "test", the only one
  direct, cot = prompts(data_dir, task)
  path = os.path.join(data_dir, ROOT, "bbh", f"{task}.json")
  rows = read_records(path, format="json", fields=("input", "target"),
                      json_records_key="examples").records
  return [{"input": row["input"], "target": row["target"].strip(), "direct_prompt": direct,
           "cot_prompt": cot} for row in rows]


def spec(data_dir: str, task: str) -> FlanTaskSpec:
  return FlanTaskSpec(
      name=f"bbh_{task}", cluster=CLUSTER, records=functools.partial(load, data_dir, task),
      templates=(DIRECT_TEMPLATE,), cot_templates=(COT_TEMPLATE,), splits=("test",),
      few_shot=False)


def register(data_dir: str) -> list[str]:
  """Registers each task and the collections; returns the mixtures. Idempotent."""
  names = [register_once(spec(data_dir, task)) for task in tasks(data_dir)]
  return names + [add_mixture_once(mixture, [f"{name}_{variant}" for name in names])
                  for variant, mixture in MIXTURES.items() if names]

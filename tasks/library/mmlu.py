"""MMLU's 57 subjects as zero-shot and 5-shot evaluation tasks, from DATA_DIR/eval/mmlu.

Files: `{dev,test}/<subject>_{dev,test}.csv` with the header
`question,choice0,choice1,choice2,choice3,answer` (answer is the index 0-3). Each
record carries the question, its choices as a list, a preformatted `choices_block`
("A. ...\\nB. ...") and the answer letter, which is the target.

Splits: the dev file is the "train" split, the test file "test". Few-shot exemplars
come from "train", so the 5-shot prompt holds the subject's five dev questions
(in an order drawn per example), then the test question: MMLU's protocol. One
FlanTaskSpec per subject registers two tasks:

    mmlu_<subject>_zs_noopt   0-shot   (the brief's mmlu_<subject>_0shot)
    mmlu_<subject>_fs_noopt   5-shot   (the brief's mmlu_<subject>_5shot)

and a mixture `mmlu_<subject>` over both; `mmlu_0shot` and `mmlu_5shot` collect
every subject. The answer choices are part of the prompt, so the specs have no
`options` and no _opt variants. The cluster is `mmlu`, for evaluation only: nothing
here has a "validation" split, so evaluate with split "test".
"""

import functools
import os

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax_tasks.library.common import add_mixture_once, register_once

ROOT = os.path.join("eval", "mmlu")
FILES = {"train": ("dev", "_dev.csv"), "test": ("test", "_test.csv")}
LETTERS = ("A", "B", "C", "D")
SHOTS = 5
# A safety net only: MMLU keeps all five exemplars. In bytes (the default vocabulary)
# the longest 5-shot prompt (high_school_european_history) is about 15k.
FEW_SHOT_TOKEN_BUDGET = 16_384
CLUSTER = "mmlu"
MIXTURES = {"zs_noopt": "mmlu_0shot", "fs_noopt": "mmlu_5shot"}  # variant -> collection mixture

TEMPLATE = Template(
    "This is a multiple-choice question on {subject_name}.\n\n{question}\n{choices_block}\nAnswer:",
    "{answer}")


def subjects(data_dir: str) -> list[str]:
  """Subjects with both a dev and a test file (a directory listing, no reads)."""
  def listed(split: str) -> set[str]:
    folder, suffix = FILES[split]
    path = os.path.join(data_dir, ROOT, folder)
    names = os.listdir(path) if os.path.isdir(path) else []
    return {n[:-len(suffix)] for n in names if n.endswith(suffix)}
  return sorted(listed("train") & listed("test"))


def subject_name(subject: str) -> str:
  return subject.replace("_", " ")


def load(data_dir: str, subject: str, split: str) -> list[dict]:
  folder, suffix = FILES[split]
  path = os.path.join(data_dir, ROOT, folder, subject + suffix)
  columns = [f"choice{i}" for i in range(len(LETTERS))]
  rows = read_records(path, fields=("question", *columns, "answer")).records
  records = []
  for index, row in enumerate(rows):
    if row["answer"] not in ("0", "1", "2", "3"):
      raise ValueError(f"{path}: row {index + 2} has answer {row['answer']!r}; expected 0-3.")
    choices = [row[c] for c in columns]
    block = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    records.append({"subject_name": subject_name(subject), "question": row["question"].strip(),
                    "choices": choices, "choices_block": block,
                    "answer": LETTERS[int(row["answer"])]})
  return records


def spec(data_dir: str, subject: str) -> FlanTaskSpec:
  return FlanTaskSpec(
      name=f"mmlu_{subject}", cluster=CLUSTER, records=functools.partial(load, data_dir, subject),
      templates=(TEMPLATE,), splits=("train", "test"), few_shot_k=SHOTS,
      few_shot_token_budget=FEW_SHOT_TOKEN_BUDGET)


def register(data_dir: str) -> list[str]:
  """Registers each subject and the collections; returns the mixtures. Idempotent."""
  names = [register_once(spec(data_dir, subject)) for subject in subjects(data_dir)]
  return names + [add_mixture_once(mixture, [f"{name}_{variant}" for name in names])
                  for variant, mixture in MIXTURES.items() if names]

"""MMLU's 57 subjects, zero-shot and 5-shot, in lm-evaluation-harness's default layout.

Files: `{dev,test}/<subject>_{dev,test}.csv` with the header
`question,choice0,choice1,choice2,choice3,answer` (answer is the index 0-3). Each
record carries the question (stripped), its choices as a list, a preformatted
`choices_block` ("A. ...\\nB. ...\\nC. ...\\nD. ...", choices as in the file) and
the answer letter, which is the target.

The prompt is lm-eval's `mmlu` default (docs/evaluation_conventions.md): one
description line, then each exemplar as "<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..
\\nAnswer: <letter>" followed by a blank line, then the test question ending in
"Answer:":

    The following are multiple choice questions (with answers) about <subject>.

    <dev question 1>
    A. ...
    ...
    Answer: B

    ...

    <test question>
    A. ...
    ...
    Answer:

The exemplars are the subject's five dev records in file order (the dev file is
the "train" split, `ordered_exemplars`). Scoring is rank classification over the
options "A".."D": the evaluator scores each letter's tokens after the prompt, with no
EOS after them (`option_scoring="continuation"`, lm-eval's loglikelihood), and predicts
the likeliest; `accuracy` compares it with the answer letter.

One FlanTaskSpec per subject registers

    mmlu_<subject>_zs_noopt   0-shot: the description line and the question
    mmlu_<subject>_fs_noopt   5-shot: as above

and a mixture `mmlu_<subject>` over both; `mmlu_0shot` and `mmlu_5shot` collect
every subject. In FLAN's style (`styles`), `mmlu_<subject>_flan_{zs,fs}_noopt`, collected
by `mmlu_0shot_flan` and `mmlu_5shot_flan`, have the same prompts but score each letter
as a training target, with EOS (t5x's rank classification). The prompt lists A-D
itself, so there are no _opt variants. The cluster is `mmlu`, for evaluation only:
nothing here has a "validation" split, so evaluation reads split "test".
"""

import dataclasses
import functools
import os

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.data.variants import FewShot
from flan_jax.metrics import accuracy
from flan_jax_tasks.library import styles
from flan_jax_tasks.library.common import size_weighted_mean

ROOT = os.path.join("eval", "mmlu")
FILES = {"train": ("dev", "_dev.csv"), "test": ("test", "_test.csv")}
LETTERS = ("A", "B", "C", "D")
SHOTS = 5
CLUSTER = "mmlu"
MIXTURES = {"zs_noopt": "mmlu_0shot", "fs_noopt": "mmlu_5shot"}  # variant -> collection mixture

# lm-eval's conventions: the description ends in a blank line, the answer follows
# "Answer:" after one space (the target delimiter), exemplars end in a blank line.
DESCRIPTION = "The following are multiple choice questions (with answers) about {subject_name}.\n\n"
QUESTION = Template("{question}\n{choices_block}\nAnswer:", "{answer}")
TARGET_DELIMITER = " "
EXEMPLAR_END = "\n\n"
ZERO_SHOT = Template(DESCRIPTION + QUESTION.inputs, QUESTION.targets)


@dataclasses.dataclass(frozen=True)
class DescribedFewShot(FewShot):
  """A description line, then k exemplars "<inputs> <target>\\n\\n", then the query.

  The framework's FewShot repeats the template per exemplar and puts the target on
  its own line; lm-eval states the description once and answers on the prompt's line.
  With k = 0 (the fallback when the run's input length fits no exemplar) this is the
  zero-shot prompt.
  """
  description: str = ""

  def render(self, record, rng, *, exemplars=(), **context):
    del rng, context  # one template, options never shown
    (template,) = self.templates
    query, target = template.render(record)
    shots = []
    for exemplar in exemplars[:self.k]:
      inputs, answer = template.render(exemplar)
      shots.append(f"{inputs}{TARGET_DELIMITER}{answer}{EXEMPLAR_END}")
    return self.description.format(**record) + "".join(shots) + query, target, 0


def subjects(data_dir: str) -> list[str]:
  """Subjects with both a dev and a test file (a directory listing, no reads)."""
  def listed(split: str) -> set[str]:
    folder, suffix = FILES[split]
    path = os.path.join(data_dir, ROOT, folder)
    names = os.listdir(path) if os.path.isdir(path) else []
    return {n[:-len(suffix)] for n in names if n.endswith(suffix)}
  return sorted(listed("train") & listed("test"))


def subject_name(subject: str) -> str:
  """The subject as the description line names it: "high_school_biology" -> "high school biology"."""
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


def spec(data_dir: str, subject: str, style: str = "lm_eval") -> FlanTaskSpec:
  """The subject's tasks in lm-eval's conventions, or with style="flan" in FLAN's
  (`mmlu_<subject>_flan`: the same prompts, each letter scored as a training target,
  with EOS, as t5x's rank classification scores it)."""
  name = f"mmlu_{subject}"
  return FlanTaskSpec(
      name=styles.flan_name(name) if style == "flan" else name, cluster=CLUSTER,
      records=functools.partial(load, data_dir, subject),
      templates=(ZERO_SHOT,), splits=("train", "test"), options=LETTERS, options_variants=False,
      ordered_exemplars=True, metric_fns=(accuracy,), style=style,
      # lm-eval's `acc`: the loglikelihood of " A" given the prompt, with no EOS after it.
      option_scoring="target" if style == "flan" else "continuation",
      # The framework's few-shot layout is replaced by lm-eval's (same name, fs_noopt).
      few_shot=False,
      extra_variants=(DescribedFewShot("fs_noopt", (QUESTION,), k=SHOTS, description=DESCRIPTION),))


def question_weighted_mean(results: dict[str, float], data_dir: str, variant: str = "fs_noopt",
                           metric: str = "accuracy") -> float:
  """lm-eval's `mmlu` score: per-subject results ("mmlu_<subject>_<variant>/<metric>", as the
  evaluator writes them) averaged with each subject's test-question count as its weight.

  Only meaningful when every test question was evaluated (max_examples_per_task=None).
  """
  weights = {f"mmlu_{subject}_{variant}/{metric}": len(load(data_dir, subject, "test"))
             for subject in subjects(data_dir)}
  return size_weighted_mean(results, weights, "subject")


def register(data_dir: str) -> list[str]:
  """Registers each subject and the collections, in both styles; returns the mixtures.
  Idempotent."""
  return styles.register_in_both_styles(
      lambda subject, style: spec(data_dir, subject, style), subjects(data_dir), MIXTURES)

"""FLAN's chain-of-thought training data: seven datasets, each with CoT and direct prompts.

`cot/flan_cot_data/<dataset>_train.tsv` rows are `question \\t answer \\t rationale`
with no header. Questions already carry their answer options ("Options:\\n- yes\\n-
no"), and line breaks are stored as the two characters `\\n`, which the loader
turns back into newlines.

Each dataset is registered as `cot_<dataset>` with two template sets of our own:
CoT templates (the `cot` variant; targets "<rationale> So the answer is <answer>.",
see `variants.cot_template`) and direct templates whose target is the answer alone
(the `zs_noopt` and `fs_noopt` variants). The wording of both names the kind of
problem (KINDS). The options stay inside the question text, so there are no
options variants.

Clusters: gsm8k and aqua are "arithmetic_cot", the other five "cot". Keeping the
math word problems apart lets an evaluation that holds out arithmetic reasoning
(GSM8K's test set) also hold out the CoT data built from GSM8K's train set.

Splits: the files are train-only, so every 20th row (indices 19, 39, ...) is
validation and the rest train, as for T0 (`t0.holdout_split`).

Metrics: `cot_exact_match`, normalised exact match of the answer after the last
"answer is" (a direct answer, which has none, is compared whole), so the CoT and
direct variants share one metric; the math word problems (gsm8k) also get
`numeric_match`, which reads "1,234" and "1234.0" as the same number.
"""

import functools
import os

import seqio

from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.data.variants import cot_template
from flan_jax.metrics import cot_exact_match, numeric_match
from flan_jax_tasks.library.common import every_nth_split

SUBDIR = os.path.join("cot", "flan_cot_data")
COLUMNS = ("question", "answer", "rationale")

COT_METRICS = (cot_exact_match,)
NUMERIC_COT_METRICS = (cot_exact_match, numeric_match)  # answers are numbers

# dataset -> (the kind of problem, as our templates name it; cluster)
DATASETS: dict[str, tuple[str, str]] = {
    "gsm8k": ("math word problem", "arithmetic_cot"),
    "aqua": ("multiple-choice math problem", "arithmetic_cot"),
    "strategyqa": ("yes-or-no question that needs several reasoning steps", "cot"),
    "creak": ("question about a claim", "cot"),
    "qasc": ("multiple-choice science question", "cot"),
    "ecqa": ("commonsense question", "cot"),
    "sensemaking": ("question about which sentence makes sense", "cot"),
}


def cot_templates(kind: str) -> tuple[Template, ...]:
  return (
      cot_template("{question}\nThink it through step by step, then give the answer."),
      cot_template(f"Answer this {kind}. Explain your reasoning first.\n\n{{question}}"),
      cot_template("{question}\n\nReason carefully, one step at a time, then answer."),
      cot_template(f"Here is a {kind}:\n{{question}}\nWork it out step by step."),
      cot_template("Question: {question}\nShow your reasoning, then state the final answer."),
      cot_template(f"Work through the following {kind} and justify the answer.\n{{question}}"),
  )


def direct_templates(kind: str) -> tuple[Template, ...]:
  return (
      Template("{question}", "{answer}"),
      Template("Question: {question}\nAnswer:", "{answer}"),
      Template(f"Answer the following {kind}.\n\n{{question}}", "{answer}"),
      Template("{question}\n\nGive only the final answer.", "{answer}"),
      Template(f"Here is a {kind}. Reply with just the answer.\n{{question}}", "{answer}"),
      Template("Q: {question}\nA:", "{answer}"),
  )


def _unescape(text: str) -> str:
  return text.replace("\\n", "\n").strip()


@functools.lru_cache(maxsize=None)
def _read(path: str) -> tuple[dict[str, str], ...]:
  result = read_records(path, fields=COLUMNS, has_header=False, column_names=COLUMNS)
  return tuple({field: _unescape(raw[field]) for field in COLUMNS} for raw in result.records)


def _loader(path: str):
  return lambda split: every_nth_split(_read(path), split)


def register(data_dir: str) -> list[str]:
  """Registers each dataset whose TSV is present; returns the mixture names."""
  directory = os.path.join(data_dir, SUBDIR)
  present = set(os.listdir(directory)) if os.path.isdir(directory) else set()
  names = []
  for dataset, (kind, cluster) in DATASETS.items():
    file_name = f"{dataset}_train.tsv"
    if file_name not in present:
      continue
    name = f"cot_{dataset}"
    if name not in seqio.MixtureRegistry.names():  # registering twice is a no-op
      register_flan_task(FlanTaskSpec(
          name=name, cluster=cluster, records=_loader(os.path.join(directory, file_name)),
          templates=direct_templates(kind), cot_templates=cot_templates(kind),
          metric_fns=NUMERIC_COT_METRICS if dataset == "gsm8k" else COT_METRICS))
    names.append(name)
  return names

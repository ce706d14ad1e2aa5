"""Open-ended instruction data: the Alpaca-format demo set and LIMA, zero- and few-shot.

Both are JSON lists in LLaMA-Factory's Alpaca format, `{instruction, input, output}`,
LIMA adding `history`: earlier `[user, assistant]` turns of the same conversation.
The loaders pre-format optional parts so that one set of six templates of our own
(TEMPLATES) serves every record:

- `input_block` is "" when the record has no input (588 of Alpaca's 1,000, all of
  LIMA's) and "\\n\\nInput:\\n<input>" otherwise, so a template never shows an empty
  "Input:" section;
- `history_block` is "" or LIMA's earlier turns flattened into the prompt as
  "User: ... / Assistant: ..." paragraphs ahead of the last user message, which is
  the target's prompt. The model learns the last reply only; earlier replies are
  context, as in a chat fine-tune that masks all but the final turn.

`InstructionFile(name, path)` registers any other file in Alpaca's format (JSON list
or JSONL) the same way under `name`: Self-Instruct's output, say (`train.instruction_files`).

Registered as `alpaca` and `lima` (cluster "open_ended"), with the zero-shot and
few-shot variants; few-shot takes 2 exemplars within a 2,048-token budget, which
LIMA's long answers often exceed, leaving the zero-shot prompt. Splits: every 20th
record is validation, the rest train (`t0.holdout_split`). The metric is ROUGE-L
against the one reference answer: open-ended answers have many right wordings, so
it measures closeness to the reference, not correctness.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import seqio
import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.errors import UserError
from flan_jax.metrics import rouge_l
from flan_jax_tasks.library.common import every_nth_split

ALPACA = os.path.join("instruct", "alpaca", "alpaca_en_demo_llamafactory.json")
LIMA = os.path.join("instruct", "lima", "lima_llamafactory.json")
CLUSTER = "open_ended"

TEMPLATES = (
    Template("{history_block}{instruction}{input_block}", "{output}"),
    Template("{history_block}Instruction:\n{instruction}{input_block}\n\nResponse:", "{output}"),
    Template("{history_block}Here is a request. Reply to it helpfully.\n\n"
             "Request: {instruction}{input_block}", "{output}"),
    Template("{history_block}User: {instruction}{input_block}\n\nAssistant:", "{output}"),
    Template("{history_block}Complete the task below.\n\n{instruction}{input_block}\n\nAnswer:",
             "{output}"),
    Template("{history_block}{instruction}{input_block}\n\nWrite your response below.", "{output}"),
)


def input_block(text: str) -> str:
  return f"\n\nInput:\n{text.strip()}" if text.strip() else ""


def history_block(turns: Sequence[Sequence[str]]) -> str:
  if not turns:
    return ""
  lines = [f"User: {user.strip()}\n\nAssistant: {assistant.strip()}" for user, assistant in turns]
  return "Conversation so far:\n\n" + "\n\n".join(lines) + "\n\n---\n\n"


def _record(instruction: str, input_text: str, output: str, turns=()) -> dict[str, str]:
  return {"instruction": instruction.strip(), "input_block": input_block(input_text),
          "history_block": history_block(turns), "output": output.strip()}


@functools.lru_cache(maxsize=None)
def read_alpaca(path: str) -> tuple[dict[str, str], ...]:
  result = read_records(path, fields=("instruction", "output"), optional_fields=("input",))
  return tuple(_record(r["instruction"], r["input"], r["output"]) for r in result.records)


def _check_turns(value: Any, where: str) -> list[tuple[str, str]]:
  if value is None:
    return []
  if not isinstance(value, list) or not all(
      isinstance(t, list) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in value):
    raise UserError(f"{where}: 'history' must be a list of [user, assistant] string pairs, got "
                    f"{str(value)[:80]!r}. Fix the record or drop its history.")
  return [tuple(t) for t in value]


@functools.lru_cache(maxsize=None)
def read_lima(path: str) -> tuple[dict[str, str], ...]:
  # read_records has no field kind for a list of pairs (`history`), so this reads the
  # JSON itself and checks what it uses, naming the element like read_records does.
  if not tf.io.gfile.exists(path):
    raise UserError(f"{path}: no such file. Point DATA_DIR at the shared data.")
  with tf.io.gfile.GFile(path) as f:
    document = json.load(f)
  records = []
  for index, raw in enumerate(document):
    where = f"{path}, element {index}"
    if not isinstance(raw, dict):
      raise UserError(f"{where}: expected an object with instruction and output.")
    for field in ("instruction", "output"):
      if not isinstance(raw.get(field), str) or not raw[field].strip():
        raise UserError(f"{where}: field {field!r} is missing or empty; fill it in or remove "
                        "the record.")
    turns = _check_turns(raw.get("history"), where)
    records.append(_record(raw["instruction"], raw.get("input") or "", raw["output"], turns))
  return tuple(records)


def _loader(read, path: str):
  return lambda split: every_nth_split(read(path), split)


def register(data_dir: str) -> list[str]:
  """Registers `alpaca` and `lima` where their files exist; returns the mixture names."""
  names = []
  for name, relative, read in (("alpaca", ALPACA, read_alpaca), ("lima", LIMA, read_lima)):
    path = os.path.join(data_dir, relative)
    if not os.path.exists(path):
      continue
    if name not in seqio.MixtureRegistry.names():  # registering twice is a no-op
      register_flan_task(FlanTaskSpec(
          name=name, cluster=CLUSTER, records=_loader(read, path), templates=TEMPLATES,
          few_shot_k=2, few_shot_token_budget=2048, metric_fns=(rouge_l,)))
    names.append(name)
  return names


@dataclasses.dataclass(frozen=True)
class InstructionFile:
  """An Alpaca-format file (`{instruction, input, output}` records, a JSON list or JSONL)
  named by path, as a FLAN-style task like `alpaca`: the same templates, zero- and
  few-shot variants, every 20th record for validation. `register` is called by `train`
  (`train.instruction_files`) with the run's vocabulary."""
  name: str
  path: str

  def register(self, vocabulary: seqio.Vocabulary) -> str:
    if not os.path.exists(self.path):
      raise UserError(f"InstructionFile {self.name!r}: {self.path} does not exist.")
    if self.name not in seqio.MixtureRegistry.names():  # registering twice is a no-op
      register_flan_task(FlanTaskSpec(
          name=self.name, cluster=CLUSTER, records=_loader(read_alpaca, self.path),
          templates=TEMPLATES, few_shot_k=2, few_shot_token_budget=2048,
          metric_fns=(rouge_l,), vocabulary=vocabulary))
    return self.name

"""Alpaca-format instruction records: read from JSON lists or JSONL, written as JSONL.

A record is `{"instruction", "input", "output"}` (`input` may be missing or empty);
other fields (LIMA's `history`, a Self-Instruct run's metadata) are kept as they
are and written back out. Each record remembers where it came from (`origin`:
"file:record number"), so a report can point at it. Anything that is not such a
record is one error naming the file, the record and the field.
"""

import dataclasses
import json
from typing import Any, Iterable, Sequence

from flan_jax import paths
from flan_jax.errors import UserError

FIELDS = ("instruction", "input", "output")


@dataclasses.dataclass(frozen=True)
class InstructionRecord:
  instruction: str
  input: str
  output: str
  origin: str  # "path:record" (records counted from 1; JSONL: the line number)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def prompt(self) -> str:
    return f"{self.instruction}\n{self.input}" if self.input else self.instruction

  @property
  def text(self) -> str:
    """Everything a reader sees: prompt and response."""
    return f"{self.prompt}\n{self.output}"

  def to_json(self) -> dict[str, Any]:
    return {"instruction": self.instruction, "input": self.input, "output": self.output,
            **self.extra}


def _record(value: Any, origin: str) -> InstructionRecord:
  if not isinstance(value, dict):
    raise UserError(f"{origin}: expected an object with {FIELDS}, got {type(value).__name__}.")
  for field in ("instruction", "output"):
    if field not in value:
      raise UserError(f"{origin}: no {field!r} field (it has {sorted(value)}); Alpaca-format "
                      "records need 'instruction' and 'output'.")
  for field in FIELDS:
    if value.get(field) is not None and not isinstance(value[field], str):
      raise UserError(f"{origin}: field {field!r} is {type(value[field]).__name__}, not text.")
  extra = {k: v for k, v in value.items() if k not in FIELDS}
  return InstructionRecord(value["instruction"], value.get("input") or "", value["output"],
                           origin, extra)


def read_records(path: str) -> list[InstructionRecord]:
  """The records of a JSON list or a JSONL file."""
  if not paths.exists(path):
    raise UserError(f"{path}: no such file.")
  text = paths.read_text(path)
  if text.lstrip().startswith("["):
    try:
      values = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}).") from None
    return [_record(v, f"{path}:{i + 1}") for i, v in enumerate(values)]
  records = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{number}: not a JSON object ({e.msg}); expected JSONL with "
                      "one Alpaca record per line, or a JSON list.") from None
    records.append(_record(value, f"{path}:{number}"))
  return records


def read_all(files: Sequence[str]) -> list[InstructionRecord]:
  return [record for path in files for record in read_records(path)]


def write_jsonl(records: Iterable[InstructionRecord], path: str) -> int:
  lines = [json.dumps(r.to_json(), ensure_ascii=False) for r in records]
  paths.write_atomically(path, "".join(line + "\n" for line in lines))
  return len(lines)

"""A task's fields out of raw records, validated: which fields, from which keys, of what kind.

`RecordSpec` maps each output field to a source key (`field_map`; dotted paths reach
into nested objects: `"meta.question"`, `"outputs.0"`), turns numbers and booleans into
strings, and checks every record. `fields` must be present and non-empty in every
record; `optional_fields` may be missing, null or empty (Alpaca's `input` is empty in
over half its records) and become "". A field in `list_fields` holds several strings
(Natural Instructions keeps several reference outputs): a list of scalars, or a single
scalar taken as a one-element list; it is empty when it has no non-blank string.

`collect` applies the spec to a reader's rows under its on_error policy: a bad record
raises `UserError` naming the place, the field and the fix, or ("skip") is dropped,
counted in `ReadResult.skipped` and summarised in one absl warning, never silently.
A file whose every record was skipped always raises: that is a wrong `field_map`, not
bad data.
"""

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

from flan_jax.data import record_files
from flan_jax.errors import UserError

Record = dict[str, str | list[str]]


@dataclasses.dataclass
class ReadResult:
  records: list[Record]
  skipped: int
  problems: list[str]  # the first record_files.MAX_PROBLEMS messages about skipped records
  path: str

  @property
  def total(self) -> int:
    return len(self.records) + self.skipped


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  """Which output fields a record must have, where they come from and their kinds."""
  fields: tuple[str, ...]
  optional_fields: tuple[str, ...]
  list_fields: frozenset[str]
  field_map: Mapping[str, str]
  on_error: str

  @classmethod
  def create(cls, fields, optional_fields, list_fields, field_map, on_error) -> "RecordSpec":
    fields, optional_fields = _names(fields, "fields"), _names(optional_fields, "optional_fields")
    list_fields = _names(list_fields, "list_fields")
    field_map = dict(field_map or {})
    if bad := {f: k for f, k in field_map.items() if not (isinstance(k, str) and k)}:
      raise UserError(f"field_map values must be source keys (non-empty strings), got {bad}.")
    if not fields:
      raise UserError("fields must name at least one required field, "
                      "e.g. fields=('inputs', 'targets').")
    record_files.check_on_error(on_error)
    known = set(fields) | set(optional_fields)
    if both := set(fields) & set(optional_fields):
      raise UserError(f"Field(s) {sorted(both)} are in both fields and optional_fields; "
                      "keep each in one.")
    for argument, names in (("list_fields", list_fields), ("field_map", field_map)):
      if unknown := set(names) - known:
        raise UserError(f"{argument} names {sorted(unknown)}, which are not among fields or "
                        f"optional_fields {sorted(known)}; add them there or drop them.")
    return cls(fields, optional_fields, frozenset(list_fields), field_map, on_error)

  def key(self, field: str) -> str:
    return self.field_map.get(field, field)

  def required_keys(self) -> dict[str, str]:
    """Output field -> source key, for the fields every record must have."""
    return {field: self.key(field) for field in self.fields}

  def extract(self, raw: Any, where: str) -> Record:
    if not isinstance(raw, Mapping):
      raise record_files.RecordProblem(
          f"{where}: expected an object with fields {self._wanted()}, got a "
          f"{type(raw).__name__} ({record_files.preview(raw)}). Every record must be a JSON "
          "object.")
    record = {}
    for field in self.fields + self.optional_fields:
      required = field in self.fields
      key = self.key(field)
      named = f"field {field!r}" + (f" (source key {key!r})" if key != field else "")
      value = record_files.lookup(raw, key)
      if value is record_files.MISSING or value is None:
        if not required:
          record[field] = [] if field in self.list_fields else ""
          continue
        state = "null" if value is None else "missing"
        raise record_files.RecordProblem(
            f"{where}: {named} is {state}; the record has keys {record_files.keys(raw)}. Add "
            f"the value, point field_map={{{field!r}: 'KEY'}} at the key that holds it, or "
            "declare it in optional_fields if records may lack it.")
      if field in self.list_fields:
        record[field] = self._strings(value, required, named, where)
      else:
        record[field] = self._string(value, required, named, key, where)
    return record

  def _strings(self, value: Any, required: bool, named: str, where: str) -> list[str]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
      if problem := record_files.value_problem(item):
        raise record_files.RecordProblem(f"{where}: {named} {problem}.")
    strings = [_as_string(item) for item in items]
    if any(s is None for s in strings):
      raise record_files.RecordProblem(
          f"{where}: {named} must be a list of strings, got {record_files.preview(value)}. Map "
          "the field to a key holding strings (a dotted path reaches nested ones).")
    if required and not any(s.strip() for s in strings):
      raise record_files.RecordProblem(
          f"{where}: {named} has no non-empty string ({record_files.preview(value)}). Fill it "
          "in, remove the record, or declare the field in optional_fields.")
    return strings

  def _string(self, value: Any, required: bool, named: str, key: str, where: str) -> str:
    if problem := record_files.value_problem(value):
      raise record_files.RecordProblem(f"{where}: {named} {problem}.")
    string = _as_string(value)
    if string is None:
      raise record_files.RecordProblem(
          f"{where}: {named} is a {type(value).__name__} ({record_files.preview(value)}), "
          "expected a string or number. Point field_map at a string inside it with a dotted "
          f"path (e.g. '{key}.text' or '{key}.0'), or declare the field in list_fields if it "
          "holds several strings.")
    if required and not string.strip():
      raise record_files.RecordProblem(
          f"{where}: {named} is empty. Fill it in, remove the record, or declare the "
          "field in optional_fields if empty values are expected.")
    return string

  def _wanted(self) -> str:
    return ", ".join(f if self.key(f) == f else f"{f} (from {self.key(f)})" for f in self.fields)

  def collect(self, rows: Iterable[tuple[str, Any]], path: str) -> ReadResult:
    """The valid records of a reader's rows, under on_error; logs what was skipped."""
    records, problems, skipped = [], [], 0
    for where, raw in rows:
      try:
        if isinstance(raw, record_files.RecordProblem):
          raise raw
        records.append(self.extract(raw, where))
      except record_files.RecordProblem as problem:
        record_files.skip_or_raise(problem, self.on_error, problems)
        skipped += 1
    result = ReadResult(records, skipped, problems, path)
    if skipped and not records:
      raise UserError(f"All {skipped} records in {path} were skipped, which points to a wrong "
                      f"field_map or format rather than bad data. First problem: {problems[0]}")
    if skipped:
      logging.warning("skipped %d of %d records in %s (on_error='skip'); the first: %s",
                      skipped, result.total, path, problems[0])
    if not result.total:
      logging.warning("%s holds no records.", path)
    return result


def _names(names: str | Sequence[str] | None, argument: str) -> tuple[str, ...]:
  if names is None:
    return ()
  if isinstance(names, str):  # fields="inputs" means one field, not five letters
    return (names,)
  names = tuple(names)
  if not all(isinstance(n, str) and n for n in names):
    raise UserError(f"{argument} must be field names (non-empty strings), got {names!r}.")
  return names


def _as_string(value: Any) -> str | None:
  """A scalar as text (True -> 'True', 3 -> '3'); None for containers and other types."""
  if isinstance(value, str):
    return value
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
    return str(value.item() if isinstance(value, np.generic) else value)
  return None

"""Record sources for seqio tasks: files, TFDS and Hugging Face, validated on read.

A task's source turns stored data into dicts of strings named by the task's own
fields (`inputs`, `targets`, `question`, ...). Three kinds:

  FileSource         JSONL, JSON (a top-level list), TSV, CSV or Parquet files per
                     split, read with `read_records`
  TfdsSource         a prepared TFDS dataset, read offline from `tfds_data_dir`
  HuggingFaceSource  a Hugging Face `datasets` dataset (optional dependency)

Validation. `read_records` maps each output field to a source key (`field_map`,
dotted paths reach into nested objects: `"meta.question"`, `"outputs.0"`), turns
numbers and booleans into strings, and checks every record. A malformed record (a
line that is not JSON or nests too deeply to parse, not an object, a missing field, a
value of the wrong type, NaN or an infinite number, a string with a lone UTF-16
surrogate, a row with the wrong number of columns) and an empty required field (empty
or only whitespace) raise `UserError` naming the file, the place, the field and the fix;
with `on_error="skip"` such records are dropped, counted in `ReadResult.skipped`
and summarised in one absl warning, never silently. Places are 1-based line
numbers for JSONL/TSV/CSV (what an editor shows; the header is line 1), 0-based
element indices for JSON lists and 0-based row indices for Parquet (what `[i]`
fetches). Problems of the whole file (it is missing, not JSON, a header lacks a
column, a directory, a `.gz` that is corrupt or cut short, a Parquet file that does
not read, a CSV quote that never closes) always raise, since skipping would drop every
record after the fault. So does a file whose every record was skipped: that is a
wrong `field_map`, not bad data. `record_files` holds the checks conversation files
share.

Fields. `fields` must be present and non-empty in every record; `optional_fields`
may be missing, null or empty (Alpaca's `input` is empty in over half its
records) and become "". A field in `list_fields` holds several strings (Natural
Instructions keeps several reference outputs): a list of scalars, or a single
scalar taken as a one-element list; it is empty when it has no non-blank string.

Formats. The extension picks the format (`.jsonl`/`.ndjson`, `.json`, `.tsv`,
`.csv`, `.parquet`/`.pq`, any of them with `.gz`); `format=` overrides it. CSV
follows RFC 4180 quoting. TSV does not quote: a `"` at the start of a cell is text
(FLAN's CoT files start claims with quotes that CSV quoting would eat), so a value
can hold neither a tab nor a newline. Cells are read verbatim; literal `\\n`
escapes, as in FLAN's CoT TSVs, stay two characters for a preprocessor to replace.
Blank lines in JSONL, TSV and CSV are not records. Remote files are read through
`tf.io.gfile`, so `gs://` paths work.

Laziness. Sources read nothing when constructed, so registering a thousand tasks
costs no I/O; the first `get_dataset` or `num_input_examples` reads and validates a
split and keeps its records in memory. Sharding takes every `num_shards`-th record
in file order before any shuffling, so hosts get disjoint shards whatever their
seeds. A list field reaches the pipeline as a 1-D string tensor of varying length
(tf.data's variable-length element, which seqio passes through untouched); it is
meant for metrics and postprocessing, templates render scalar fields.
"""

import abc
import csv
import dataclasses
import io
import os
import threading
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import record_files
from flan_jax.errors import UserError

Format = Literal["jsonl", "json", "tsv", "csv", "parquet"]
OnError = Literal["raise", "skip"]
Record = dict[str, str | list[str]]

FORMATS: tuple[str, ...] = ("jsonl", "json", "tsv", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".tsv": "tsv",
               ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_MAX_PROBLEMS = 20  # problems kept in ReadResult; the count covers all of them
_MISSING = object()

# Python's csv module refuses cells over 128 KiB by default; documents in
# instruction data (summarisation inputs) are longer than that.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


@dataclasses.dataclass
class ReadResult:
  records: list[Record]
  skipped: int
  problems: list[str]  # the first _MAX_PROBLEMS messages about skipped records
  path: str

  @property
  def total(self) -> int:
    return len(self.records) + self.skipped


class _RecordProblem(Exception):
  """One bad record; becomes a UserError or a skipped record, by policy."""


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Which output fields a record must have, where they come from and their kinds."""
  fields: tuple[str, ...]
  optional_fields: tuple[str, ...]
  list_fields: frozenset[str]
  field_map: Mapping[str, str]
  on_error: str

  @classmethod
  def create(cls, fields, optional_fields, list_fields, field_map, on_error) -> "_Spec":
    fields, optional_fields = _names(fields, "fields"), _names(optional_fields, "optional_fields")
    list_fields = _names(list_fields, "list_fields")
    field_map = dict(field_map or {})
    if bad := {f: k for f, k in field_map.items() if not (isinstance(k, str) and k)}:
      raise UserError(f"field_map values must be source keys (non-empty strings), got {bad}.")
    if not fields:
      raise UserError("fields must name at least one required field, "
                      "e.g. fields=('inputs', 'targets').")
    if on_error not in ("raise", "skip"):
      raise UserError(f"on_error={on_error!r}; use 'raise' (stop at the first bad record) "
                      "or 'skip' (drop bad records and count them).")
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
      raise _RecordProblem(
          f"{where}: expected an object with fields {self._wanted()}, got a "
          f"{type(raw).__name__} ({_preview(raw)}). Every record must be a JSON object.")
    record = {}
    for field in self.fields + self.optional_fields:
      required = field in self.fields
      key = self.key(field)
      named = f"field {field!r}" + (f" (source key {key!r})" if key != field else "")
      value = _lookup(raw, key)
      if value is _MISSING or value is None:
        if not required:
          record[field] = [] if field in self.list_fields else ""
          continue
        state = "null" if value is None else "missing"
        raise _RecordProblem(
            f"{where}: {named} is {state}; the record has keys {_keys(raw)}. Add the value, "
            f"point field_map={{{field!r}: 'KEY'}} at the key that holds it, or declare it in "
            "optional_fields if records may lack it.")
      if field in self.list_fields:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for item in items:
          if problem := record_files.value_problem(item):
            raise _RecordProblem(f"{where}: {named} {problem}.")
        strings = [_as_string(item) for item in items]
        if any(s is None for s in strings):
          raise _RecordProblem(
              f"{where}: {named} must be a list of strings, got {_preview(value)}. Map the "
              "field to a key holding strings (a dotted path reaches nested ones).")
        if required and not any(s.strip() for s in strings):
          raise _RecordProblem(
              f"{where}: {named} has no non-empty string ({_preview(value)}). Fill it in, "
              "remove the record, or declare the field in optional_fields.")
        record[field] = strings
      else:
        if problem := record_files.value_problem(value):
          raise _RecordProblem(f"{where}: {named} {problem}.")
        string = _as_string(value)
        if string is None:
          raise _RecordProblem(
              f"{where}: {named} is a {type(value).__name__} ({_preview(value)}), expected a "
              "string or number. Point field_map at a string inside it with a dotted path "
              f"(e.g. '{key}.text' or '{key}.0'), or declare the field in list_fields if it "
              "holds several strings.")
        if required and not string.strip():
          raise _RecordProblem(
              f"{where}: {named} is empty. Fill it in, remove the record, or declare the "
              "field in optional_fields if empty values are expected.")
        record[field] = string
    return record

  def _wanted(self) -> str:
    return ", ".join(f if self.key(f) == f else f"{f} (from {self.key(f)})" for f in self.fields)


def _names(names: str | Sequence[str] | None, argument: str) -> tuple[str, ...]:
  if names is None:
    return ()
  if isinstance(names, str):  # fields="inputs" means one field, not five letters
    return (names,)
  names = tuple(names)
  if not all(isinstance(n, str) and n for n in names):
    raise UserError(f"{argument} must be field names (non-empty strings), got {names!r}.")
  return names


def _lookup(raw: Any, key: str) -> Any:
  """raw[key], or the dotted path `a.b.0` through objects and lists; _MISSING if absent."""
  if isinstance(raw, Mapping) and key in raw:  # a key may itself contain dots
    return raw[key]
  value = raw
  for part in key.split("."):
    if isinstance(value, Mapping) and part in value:
      value = value[part]
    elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
      value = value[int(part)]
    else:
      return _MISSING
  return value


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


def _preview(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def _keys(raw: Mapping, limit: int = 12) -> str:
  keys = sorted(map(str, raw))
  return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")


def infer_format(path: str) -> str:
  """The record format from the file name (`.jsonl`, `.tsv.gz`, ...)."""
  name = path[:-3] if path.endswith(".gz") else path
  extension = os.path.splitext(name)[1].lower()
  if extension not in _EXTENSIONS:
    raise UserError(
        f"{path}: cannot tell the record format from the extension {extension or '(none)'!r}. "
        f"Pass format= one of {list(FORMATS)}, or rename the file to "
        f"{', '.join(sorted(_EXTENSIONS))}.")
  return _EXTENSIONS[extension]


def _check_format(format: str | None, path: str, has_header: bool,
                  column_names: Sequence[str] | None) -> str:
  """The file's format, and that a headerless table names its columns (no I/O)."""
  if format is None:
    format = infer_format(path)
  elif format not in FORMATS:
    raise UserError(f"format={format!r}; use one of {list(FORMATS)}.")
  if format in ("tsv", "csv") and not has_header and not column_names:
    raise UserError(f"{path}: a {format.upper()} file without a header needs column_names=[...] "
                    "naming its columns in order.")
  return format


def _decode(data: bytes, path: str) -> str:
  try:
    return data.decode("utf-8-sig")  # -sig: spreadsheet exports start with a BOM
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}, line {line}: not UTF-8 ({e.reason}). Re-encode the file as "
                    "UTF-8, e.g. `iconv -f latin1 -t utf-8`.") from None


# Each reader yields (where, raw record or _RecordProblem); a problem of the whole
# file is raised as UserError directly.

def _jsonl_rows(data: bytes, path: str) -> Iterator[tuple[str, Any]]:
  for number, line in enumerate(data.split(b"\n"), start=1):
    where = f"{path}, line {number}"
    if number == 1:
      line = line.removeprefix(b"\xef\xbb\xbf")
    if not line.strip():
      continue
    try:
      yield where, record_files.parse_json(line)
    except record_files.JsonError as e:
      yield where, _RecordProblem(f"{where}: {e}. Each line of a JSONL file must be one "
                                  "complete JSON object; fix or remove the line.")


def _json_rows(data: bytes, path: str, records_key: str | None) -> Iterator[tuple[str, Any]]:
  try:
    document = record_files.parse_json(_decode(data, path))
  except record_files.JsonError as e:
    place = f"{path}, line {e.line}" if e.line else path
    hint = (" The file seems to hold one object per line: pass format='jsonl'."
            if e.msg == "Extra data" else "")
    raise UserError(f"{place}: {e}.{hint} Fix the file, e.g. find the spot with "
                    "`python -m json.tool FILE`.") from None
  prefix = path
  if records_key is not None:
    found = _lookup(document, records_key)
    if found is _MISSING:
      keys = _keys(document) if isinstance(document, Mapping) else type(document).__name__
      raise UserError(f"{path}: json_records_key={records_key!r} is not in the file (top level: "
                      f"{keys}). Name the key that holds the list of records.")
    document, prefix = found, f"{path} {records_key}"
  if isinstance(document, Mapping) and records_key is not None:
    # e.g. instruction induction's {"examples": {"1": {...}, "2": {...}}}
    for key, raw in document.items():
      yield f"{prefix}[{key!r}]", raw
    return
  if not isinstance(document, list):
    found = f"an object with keys {_keys(document)}" if isinstance(document, Mapping) else (
        f"a {type(document).__name__}")
    raise UserError(
        f"{path}: expected a JSON list of records at the top level, found {found}. Pass "
        "json_records_key='KEY' naming the list inside it, or format='jsonl' for one object "
        "per line.")
  for index, raw in enumerate(document):
    yield f"{prefix}, element {index}", raw


def _delimited_rows(data: bytes, path: str, format: str, spec: _Spec, delimiter: str | None,
                    has_header: bool, column_names: Sequence[str] | None
                    ) -> Iterator[tuple[str, Any]]:
  lines = _Lines(_decode(data, path))
  if format == "tsv":
    reader = csv.reader(lines, delimiter=delimiter or "\t", quoting=csv.QUOTE_NONE)
  else:
    reader = csv.reader(lines, delimiter=delimiter or ",")
  columns = list(column_names) if column_names else None
  if columns is not None:
    _check_columns(columns, spec, path, "column_names")
  header_seen = not has_header
  lines_read = 0
  try:
    for row in reader:
      first_line, lines_read = lines_read + 1, reader.line_num  # a quoted value may span lines
      if lines.exhausted:
        # Always an error: skipping the row would drop every line after the quote.
        raise UserError(
            f"{path}, line {first_line}: a quoted value in the row starting here never closes, "
            f"so lines {first_line}-{lines_read} (the rest of the file) would be one value. "
            'Close the quote; a quote inside a quoted value is written twice ("").')
      if not row:
        continue
      if not header_seen:
        header_seen = True
        # column_names given with a header rename the columns the header lists.
        if columns is None:
          columns = [name.strip() for name in row]
          _check_columns(columns, spec, path, f"header (line {first_line})")
        continue
      where = f"{path}, line {first_line}"
      if len(row) != len(columns):
        if format == "tsv":
          fix = "separated by tabs; a tab or newline inside a value breaks a TSV row, so remove it."
        else:
          fix = f"separated by {delimiter or ','!r}; quote values that contain it."
        yield where, _RecordProblem(
            f"{where}: {len(row)} columns, expected {len(columns)} ({', '.join(columns)}). "
            f"Each row needs one value per column, {fix}")
        continue
      yield where, dict(zip(columns, row))
  except csv.Error as e:
    raise UserError(f"{path}, line {reader.line_num}: unreadable {format.upper()} ({e}). "
                    "Fix the quoting on that line.") from None


class _Lines:
  """A text's lines for csv.reader, noting when it asks past the last. A row that comes
  back after that ran into the end of the file inside a quoted value, which Python's
  csv quietly closes there; every complete row ends without asking further."""

  def __init__(self, text: str):
    self._lines = iter(io.StringIO(text, newline=""))
    self.exhausted = False

  def __iter__(self):
    return self

  def __next__(self) -> str:
    try:
      return next(self._lines)
    except StopIteration:
      self.exhausted = True
      raise


def _check_columns(columns: Sequence[str], spec: _Spec, path: str, source: str) -> None:
  """A required column absent from the header would fail every row: say so once."""
  for field, key in spec.required_keys().items():
    if key not in columns and key.split(".")[0] not in columns:
      fix = f"Map the field to a column with field_map={{{field!r}: 'COLUMN'}}"
      if source.startswith("header"):
        fix += ", or pass has_header=False and column_names=[...] if the file has no header"
      raise UserError(f"{path}: field {field!r} reads column {key!r}, which the {source} lacks "
                      f"(columns: {list(columns)}). {fix}.")


def _parquet_rows(data: bytes, path: str, spec: _Spec) -> Iterator[tuple[str, Any]]:
  import pyarrow  # pylint: disable=g-import-not-at-top  # only Parquet files need it
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    table = pq.read_table(pyarrow.BufferReader(data))
  except (pyarrow.ArrowException, OSError) as e:  # pyarrow raises OSError for bad metadata
    raise UserError(
        f"{path}: not a readable Parquet file ({e}). Check the file and format=.") from None
  _check_columns(table.column_names, spec, path, "Parquet schema")
  for index, raw in enumerate(table.to_pylist()):
    yield f"{path}, row {index}", raw


def _collect(rows: Iterable[tuple[str, Any]], spec: _Spec, path: str) -> ReadResult:
  """Validates rows under spec.on_error; logs a summary of what was skipped."""
  records, problems, skipped = [], [], 0
  for where, raw in rows:
    try:
      if isinstance(raw, _RecordProblem):
        raise raw
      records.append(spec.extract(raw, where))
    except _RecordProblem as problem:
      if spec.on_error == "raise":
        raise UserError(f"{problem} (Or pass on_error='skip' to drop such records and count "
                        "them.)") from None
      skipped += 1
      if len(problems) < _MAX_PROBLEMS:
        problems.append(str(problem))
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


def read_records(
    path: str | os.PathLike,
    *,
    fields: str | Sequence[str],
    format: Format | None = None,
    field_map: Mapping[str, str] | None = None,
    optional_fields: Sequence[str] = (),
    list_fields: Sequence[str] = (),
    on_error: OnError = "raise",
    delimiter: str | None = None,
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    json_records_key: str | None = None,
) -> ReadResult:
  """Reads and validates the records of one file (see the module docstring).

  Args:
    path: a local or `gs://` file; `.gz` is decompressed.
    fields: output fields every record must have, non-empty.
    format: jsonl, json, tsv, csv or parquet; None infers it from the extension.
    field_map: output field -> source key or dotted path (default: the field's name).
    optional_fields: output fields that may be missing or empty ("" then).
    list_fields: fields (of either kind) holding a list of strings.
    on_error: "raise" at the first bad record, or "skip" it and count it.
    delimiter: the TSV/CSV separator (default tab / comma).
    has_header: whether the TSV/CSV file's first line names the columns.
    column_names: the TSV/CSV columns in order: required without a header, and
      replacing the header's names with one.
    json_records_key: for JSON, the (dotted) key of the list of records inside a
      top-level object, e.g. "examples" for BIG-Bench Hard.
  """
  path = os.fspath(path)
  spec = _Spec.create(fields, optional_fields, list_fields, field_map, on_error)
  format = _check_format(format, path, has_header, column_names)
  data = record_files.read_bytes(path)
  if format == "jsonl":
    rows = _jsonl_rows(data, path)
  elif format == "json":
    rows = _json_rows(data, path, json_records_key)
  elif format == "parquet":
    rows = _parquet_rows(data, path, spec)
  else:
    rows = _delimited_rows(data, path, format, spec, delimiter, has_header, column_names)
  return _collect(rows, spec, path)


class _RecordSource(seqio.DataSource):
  """A seqio source over validated records held in memory, read on first use."""

  def __init__(self, splits: Iterable[str], spec: _Spec, caching_permitted: bool):
    super().__init__(splits=splits, caching_permitted=caching_permitted)
    self._spec = spec
    self._records: dict[str, list[Record]] = {}
    self._lock = threading.Lock()  # tf.data may build several tasks' pipelines at once

  @abc.abstractmethod
  def _read(self, split: str) -> list[Record]:
    """All valid records of a split, in a fixed order."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # the records are in memory, so any number of shards is a slice

  def records(self, split: str) -> list[Record]:
    """The split's validated records (read once, then cached)."""
    if split not in self.splits:
      raise UserError(f"{self!r} has no split {split!r}; its splits are {list(self.splits)}.")
    with self._lock:
      if split not in self._records:
        records = self._read(split)
        if not records:
          raise UserError(f"{self!r}: split {split!r} has no records. A task needs at least one; "
                          "check the files.")
        self._records[split] = records
      return self._records[split]

  def num_input_examples(self, split: str) -> int:
    return len(self.records(split))

  def get_dataset(
      self,
      split: str = "train",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # unused, as in seqio sources
      use_cached: bool = False,  # unused
      num_epochs: int | None = 1,  # unused: seqio repeats after preprocessing
  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    records = self.records(split)
    if shard_info is not None:
      # By index in file order, before shuffling: shards stay disjoint whatever the seeds.
      records = records[shard_info.index::shard_info.num_shards]
    if shuffle:
      order = np.random.default_rng(seed).permutation(len(records))
      records = [records[i] for i in order]
    return _to_dataset(records, self._spec)


def _to_dataset(records: Sequence[Record], spec: _Spec) -> tf.data.Dataset:
  columns = {}
  for field in spec.fields + spec.optional_fields:
    values = [record[field] for record in records]
    if field in spec.list_fields:
      flat = [item for value in values for item in value]
      columns[field] = tf.RaggedTensor.from_row_lengths(
          tf.constant(flat, dtype=tf.string, shape=[len(flat)]),
          tf.constant([len(v) for v in values], dtype=tf.int64, shape=[len(values)]))
    else:
      columns[field] = tf.constant(values, dtype=tf.string, shape=[len(values)])
  dataset = tf.data.Dataset.from_tensor_slices(columns)
  if spec.list_fields:
    # Slices of a ragged column come out as ragged-rank-0 specs; passing them through a
    # map makes them plain (None,) string tensors, which seqio and every op expect.
    dataset = dataset.map(_identity, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset


@tf.autograph.experimental.do_not_convert
def _identity(example):
  return dict(example)


class FileSource(_RecordSource):
  """Record files per split: `FileSource({"train": "train.jsonl"}, fields=(...))`.

  A split's value is a path, a glob pattern (`data/train-*.jsonl`) or a list of
  either; the files are read in the given order (globs sorted) and concatenated.
  Every argument but split_to_path is passed to `read_records` for each file.
  """

  def __init__(
      self,
      split_to_path: Mapping[str, str | Sequence[str]],
      *,
      fields: str | Sequence[str],
      field_map: Mapping[str, str] | None = None,
      optional_fields: Sequence[str] = (),
      list_fields: Sequence[str] = (),
      on_error: OnError = "raise",
      format: Format | None = None,
      delimiter: str | None = None,
      has_header: bool = True,
      column_names: Sequence[str] | None = None,
      json_records_key: str | None = None,
      caching_permitted: bool = True,
  ):
    if not split_to_path:
      raise UserError("FileSource needs at least one split, e.g. {'train': 'train.jsonl'}.")
    self._split_to_paths = {
        split: (os.fspath(paths),) if isinstance(paths, (str, os.PathLike))
        else tuple(map(os.fspath, paths))
        for split, paths in split_to_path.items()}
    for split, paths in self._split_to_paths.items():
      if not paths:
        raise UserError(f"FileSource: split {split!r} lists no files.")
      for path in paths:  # names only, no I/O: a bad extension fails at registration
        _check_format(format, path, has_header, column_names)
    spec = _Spec.create(fields, optional_fields, list_fields, field_map, on_error)
    super().__init__(self._split_to_paths, spec, caching_permitted)
    self._read_kwargs = dict(
        fields=fields, field_map=field_map, optional_fields=optional_fields,
        list_fields=list_fields, on_error=on_error, format=format, delimiter=delimiter,
        has_header=has_header, column_names=column_names, json_records_key=json_records_key)

  def __repr__(self) -> str:
    return f"FileSource({self._split_to_paths!r}, fields={self._spec.fields!r})"

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _files(self, split: str) -> list[str]:
    files = []
    for path in self._split_to_paths[split]:
      if any(c in path for c in "*?["):
        matched = sorted(tf.io.gfile.glob(path))
        if not matched:
          raise UserError(f"{path}: the pattern (split {split!r}) matches no files.")
        files.extend(matched)
      else:
        files.append(path)
    return files

  def _read(self, split: str) -> list[Record]:
    records = []
    for path in self._files(split):
      records.extend(read_records(path, **self._read_kwargs).records)
    return records


class HuggingFaceSource(_RecordSource):
  """A Hugging Face `datasets` dataset, validated like files; `datasets` stays optional.

  `splits` lists split names or maps ours to the dataset's (`{"validation":
  "test"}`). `load_kwargs` go to `datasets.load_dataset` (`data_files`,
  `cache_dir`, `revision`, ...); set HF_DATASETS_OFFLINE=1 to read only the local
  cache. `datasets` is imported on first read, so registering works without it.
  """

  def __init__(
      self,
      path: str,
      *,
      splits: Sequence[str] | Mapping[str, str],
      fields: str | Sequence[str],
      name: str | None = None,
      field_map: Mapping[str, str] | None = None,
      optional_fields: Sequence[str] = (),
      list_fields: Sequence[str] = (),
      on_error: OnError = "raise",
      load_kwargs: Mapping[str, Any] | None = None,
      caching_permitted: bool = True,
  ):
    self._split_map = dict(splits) if isinstance(splits, Mapping) else {s: s for s in splits}
    if not self._split_map:
      raise UserError(f"HuggingFaceSource({path!r}) needs at least one split.")
    spec = _Spec.create(fields, optional_fields, list_fields, field_map, on_error)
    super().__init__(self._split_map, spec, caching_permitted)
    self._path, self._name, self._load_kwargs = path, name, dict(load_kwargs or {})

  def __repr__(self) -> str:
    config = f", name={self._name!r}" if self._name else ""
    return f"HuggingFaceSource({self._path!r}{config}, splits={self._split_map!r})"

  def list_shards(self, split: str) -> Sequence[str]:
    return [f"{self._path}:{self._split_map[split]}"]

  def _read(self, split: str) -> list[Record]:
    try:
      import datasets  # pylint: disable=g-import-not-at-top  # optional dependency
    except ImportError:
      raise UserError(f"{self!r} needs the Hugging Face `datasets` package: "
                      "`pip install datasets`.") from None
    hf_split = self._split_map[split]
    try:
      dataset = datasets.load_dataset(self._path, self._name, split=hf_split, **self._load_kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
      raise UserError(f"{self!r}: cannot load split {hf_split!r} ({e}). Check the name, or with "
                      "HF_DATASETS_OFFLINE=1 that the dataset is in the local cache.") from None
    where = f"{self._path} {hf_split}"
    rows = ((f"{where}, row {index}", raw) for index, raw in enumerate(dataset))
    return _collect(rows, self._spec, where).records


def _default_tfds_data_dir() -> str:
  home = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  return os.environ.get("TFDS_DATA_DIR") or home  # where tfds itself looks


class TfdsSource(seqio.TfdsDataSource):
  """A TFDS dataset read offline (read_only) from `tfds_data_dir`; never downloads.

  `tfds_name` is seqio's "name[/config]:version" (the version may be a pattern,
  `1.*.*`). Construction does no I/O; the first use checks that the dataset is
  prepared in the directory and otherwise says how to get it there. Features keep
  TFDS's names and types: map them to a task's fields with a preprocessor such as
  `seqio.preprocessors.rekey`.
  """

  def __init__(
      self,
      tfds_name: str,
      *,
      tfds_data_dir: str | None = None,
      splits: Iterable[str] | Mapping[str, str] | None = None,
      caching_permitted: bool = True,
      decoders=None,
      tfds_builder_kwargs: dict[str, Any] | None = None,
  ):
    self._data_dir = tfds_data_dir or _default_tfds_data_dir()
    try:
      super().__init__(tfds_name, tfds_data_dir=self._data_dir, splits=splits,
                       caching_permitted=caching_permitted, decoders=decoders,
                       tfds_builder_kwargs=tfds_builder_kwargs, read_only=True)
    except ValueError as e:
      raise UserError(f"TfdsSource({tfds_name!r}): {e}. Write it as 'name[/config]:version', "
                      "e.g. 'glue/rte:2.0.0' or 'my_dataset:1.*.*'.") from None
    self._tfds_name = tfds_name
    self._checked = False

  def _check_prepared(self) -> None:
    if self._checked:
      return
    name, _, version = self._tfds_name.partition(":")
    base = os.path.join(self._data_dir, *name.split("/"))
    # With no config in the name, a dataset with configs lives one level deeper.
    patterns = [os.path.join(base, version, "dataset_info.json")]
    if "/" not in name:
      patterns.append(os.path.join(base, "*", version, "dataset_info.json"))
    if not any(tf.io.gfile.glob(pattern) for pattern in patterns):
      raise UserError(
          f"TFDS dataset {self._tfds_name!r} is not prepared in {self._data_dir} (looked for "
          f"{' or '.join(patterns)}). flan_jax reads TFDS offline: prepare it with `tfds build "
          f"{name.split('/')[0]} --data_dir={self._data_dir}` (add `--config=...` for a config) on "
          "a machine with network access and copy the directory here, or point tfds_data_dir "
          "(or TFDS_DATA_DIR) at where it is.")
    self._checked = True

  @property
  def splits(self):
    if not self._splits:
      self._check_prepared()
    return super().splits

  def get_dataset(self, split: str | None = None, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    self._check_prepared()
    return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)

  def num_input_examples(self, split: str) -> int | None:
    self._check_prepared()
    return super().num_input_examples(split)

  def list_shards(self, split: str) -> Sequence[str]:
    self._check_prepared()
    return super().list_shards(split)

"""The rows of a record file, one reader per format: JSONL, JSON, TSV, CSV and Parquet.

Each reader turns a file's bytes into (place, raw record) pairs, where the place
names the file and the record's position in it: 1-based line numbers for
JSONL/TSV/CSV (what an editor shows; the header is line 1), 0-based element indices
for JSON lists and 0-based row indices for Parquet (what `[i]` fetches). A record
that cannot be read (a line that is not JSON, a row with the wrong number of
columns) comes as a `record_files.RecordProblem` in place of the record, for the
caller's on_error policy; a problem of the whole file (not JSON, a header lacking a
column, a Parquet file that does not read, a CSV quote that never closes) raises
`UserError`, since skipping would drop every record after the fault.

The extension picks the format (`.jsonl`/`.ndjson`, `.json`, `.tsv`, `.csv`,
`.parquet`/`.pq`, any of them with `.gz`); `Layout.format` overrides it. CSV follows
RFC 4180 quoting. TSV does not quote: a `"` at the start of a cell is text (FLAN's
CoT files start claims with quotes that CSV quoting would eat), so a value can hold
neither a tab nor a newline. Cells are read verbatim; literal `\\n` escapes, as in
FLAN's CoT TSVs, stay two characters for a preprocessor to replace. Blank lines in
JSONL, TSV and CSV are not records.
"""

import csv
import dataclasses
import io
import os
from typing import Any, Iterator, Literal, Mapping, Sequence

from flan_jax.data import record_files
from flan_jax.errors import UserError

Format = Literal["jsonl", "json", "tsv", "csv", "parquet"]
Rows = Iterator[tuple[str, Any]]  # (place, raw record or record_files.RecordProblem)

FORMATS: tuple[str, ...] = ("jsonl", "json", "tsv", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".tsv": "tsv",
              ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

# Python's csv module refuses cells over 128 KiB by default; documents in
# instruction data (summarisation inputs) are longer than that.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def extension(path: str) -> str:
  """The file's extension, lower case, behind a `.gz` (`.tsv` for `a.TSV.gz`)."""
  name = path[:-3] if path.endswith(".gz") else path
  return os.path.splitext(name)[1].lower()


def infer_format(path: str) -> str:
  """The record format from the file name (`.jsonl`, `.tsv.gz`, ...)."""
  found = extension(path)
  if found not in EXTENSIONS:
    raise UserError(
        f"{path}: cannot tell the record format from the extension {found or '(none)'!r}. "
        f"Pass format= one of {list(FORMATS)}, or rename the file to "
        f"{', '.join(sorted(EXTENSIONS))}.")
  return EXTENSIONS[found]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How records lie in a file: its format (None: from the extension) and, for tables,
  the separator, whether a header names the columns, and the column names (required
  without a header, renaming the header's with one); for a JSON object, the (dotted)
  key of the list of records inside it."""
  format: Format | None = None
  delimiter: str | None = None
  has_header: bool = True
  column_names: Sequence[str] | None = None
  json_records_key: str | None = None

  def format_of(self, path: str) -> str:
    """The file's format, and that a headerless table names its columns (no I/O)."""
    format = self.format
    if format is None:
      format = infer_format(path)
    elif format not in FORMATS:
      raise UserError(f"format={format!r}; use one of {list(FORMATS)}.")
    if format in ("tsv", "csv") and not self.has_header and not self.column_names:
      raise UserError(f"{path}: a {format.upper()} file without a header needs "
                      "column_names=[...] naming its columns in order.")
    return format

  def rows(self, data: bytes, path: str, required: Mapping[str, str]) -> Rows:
    """The file's rows; `required` (output field -> source key) lets a table whose
    columns lack a required key fail once, not at every row."""
    format = self.format_of(path)
    if format == "jsonl":
      return jsonl_rows(data, path)
    if format == "json":
      return _json_rows(data, path, self.json_records_key)
    if format == "parquet":
      return _parquet_rows(data, path, required)
    return _delimited_rows(data, path, format, required, self)


def jsonl_rows(data: bytes, path: str) -> Rows:
  """One JSON value per non-blank line."""
  for number, value in record_files.json_lines(data):
    where = f"{path}, line {number}"
    if isinstance(value, record_files.JsonError):
      value = record_files.RecordProblem(
          f"{where}: {value}. Each line of a JSONL file must be one complete JSON object; fix "
          "or remove the line.")
    yield where, value


def json_document(data: bytes, path: str, format_argument: str = "format") -> Any:
  """The file's one JSON value; `format_argument` is the reader's argument that says a
  file holds JSONL instead (named in the message when it seems to)."""
  try:
    return record_files.parse_json(record_files.decode(data, path))
  except record_files.JsonError as e:
    place = f"{path}, line {e.line}" if e.line else path
    hint = (f" The file seems to hold one object per line: pass {format_argument}='jsonl'."
            if e.msg == "Extra data" else "")
    raise UserError(f"{place}: {e}.{hint} Fix the file, e.g. find the spot with "
                    "`python -m json.tool FILE`.") from None


def json_elements(document: list, prefix: str) -> Rows:
  for index, raw in enumerate(document):
    yield f"{prefix}, element {index}", raw


def _json_rows(data: bytes, path: str, records_key: str | None) -> Rows:
  document = json_document(data, path)
  prefix = path
  if records_key is not None:
    found = record_files.lookup(document, records_key)
    if found is record_files.MISSING:
      keys = (record_files.keys(document) if isinstance(document, Mapping)
              else type(document).__name__)
      raise UserError(f"{path}: json_records_key={records_key!r} is not in the file (top level: "
                      f"{keys}). Name the key that holds the list of records.")
    document, prefix = found, f"{path} {records_key}"
  if isinstance(document, Mapping) and records_key is not None:
    # e.g. instruction induction's {"examples": {"1": {...}, "2": {...}}}
    for key, raw in document.items():
      yield f"{prefix}[{key!r}]", raw
    return
  if not isinstance(document, list):
    found = (f"an object with keys {record_files.keys(document)}"
             if isinstance(document, Mapping) else f"a {type(document).__name__}")
    raise UserError(
        f"{path}: expected a JSON list of records at the top level, found {found}. Pass "
        "json_records_key='KEY' naming the list inside it, or format='jsonl' for one object "
        "per line.")
  yield from json_elements(document, prefix)


def _delimited_rows(data: bytes, path: str, format: str, required: Mapping[str, str],
                    layout: Layout) -> Rows:
  lines = _Lines(record_files.decode(data, path))
  delimiter = layout.delimiter
  if format == "tsv":
    reader = csv.reader(lines, delimiter=delimiter or "\t", quoting=csv.QUOTE_NONE)
  else:
    reader = csv.reader(lines, delimiter=delimiter or ",")
  columns = list(layout.column_names) if layout.column_names else None
  if columns is not None:
    _check_columns(columns, required, path, "column_names")
  header_seen = not layout.has_header
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
          _check_columns(columns, required, path, f"header (line {first_line})")
        continue
      where = f"{path}, line {first_line}"
      if len(row) != len(columns):
        if format == "tsv":
          fix = "separated by tabs; a tab or newline inside a value breaks a TSV row, so remove it."
        else:
          fix = f"separated by {delimiter or ','!r}; quote values that contain it."
        yield where, record_files.RecordProblem(
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


def _check_columns(columns: Sequence[str], required: Mapping[str, str], path: str,
                   source: str) -> None:
  """A required column absent from the header would fail every row: say so once."""
  for field, key in required.items():
    if key not in columns and key.split(".")[0] not in columns:
      fix = f"Map the field to a column with field_map={{{field!r}: 'COLUMN'}}"
      if source.startswith("header"):
        fix += ", or pass has_header=False and column_names=[...] if the file has no header"
      raise UserError(f"{path}: field {field!r} reads column {key!r}, which the {source} lacks "
                      f"(columns: {list(columns)}). {fix}.")


def _parquet_rows(data: bytes, path: str, required: Mapping[str, str]) -> Rows:
  import pyarrow  # pylint: disable=g-import-not-at-top  # only Parquet files need it
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    table = pq.read_table(pyarrow.BufferReader(data))
  except (pyarrow.ArrowException, OSError) as e:  # pyarrow raises OSError for bad metadata
    raise UserError(
        f"{path}: not a readable Parquet file ({e}). Check the file and format=.") from None
  _check_columns(table.column_names, required, path, "Parquet schema")
  for index, raw in enumerate(table.to_pylist()):
    yield f"{path}, row {index}", raw

"""Reading record files safely: the bytes, the JSON in them, and values fit to train on.

Record sources (`sources`), conversation files (`conversations`) and text corpora
(`text_examples`) read files that can be broken in ways Python reports as
tracebacks, or not at all. Here each becomes one `UserError` naming the file, or a
phrase the reader puts beside the place and field it knows:

  - a path that is missing, a directory, or unreadable (permissions);
  - a `.gz` file that is not gzip or was cut short (an interrupted copy);
  - JSON nested deeper than Python's parser can go (it raises RecursionError);
  - numbers JSON has no place for, which Python reads anyway: NaN, Infinity and
    numbers beyond a float (1e400) would otherwise become the text "nan" or "inf";
  - a string holding half of a UTF-16 surrogate pair (a broken `\\ud800` escape):
    Python accepts it, but it is no Unicode text and fails in TensorFlow or a
    tokenizer far from the file.

A bad record is a `RecordProblem` until the reader's `on_error` policy decides
(`skip_or_raise`): stop at it, or drop it and count it. The rest of this module is
what every reader's messages share: a value's preview and a record's keys.
"""

import gzip
import json
import math
import numbers
import os
import zlib
from typing import Any, Iterator, Mapping

from flan_jax.errors import UserError

MAX_PROBLEMS = 20  # messages kept about skipped records; their count covers all of them


class JsonError(ValueError):
  """A JSON text that cannot be read: str() says why, `msg` is json's own reason (""
  for other problems) and `line` the 1-based line (None where unknown)."""

  def __init__(self, problem: str, msg: str = "", line: int | None = None):
    super().__init__(problem)
    self.msg, self.line = msg, line


def read_bytes(path: str) -> bytes:
  """The file's bytes, decompressed when the name ends in `.gz` (local or `gs://`)."""
  data = _read_remote(path) if "://" in path else _read_local(path)
  if not path.endswith(".gz"):
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:  # not gzip; cut short; corrupt
    raise UserError(f"{path}: not a readable gzip file ({e}). It is corrupt or was cut short "
                    "(an interrupted download or copy?): copy it again, check it with "
                    "`gzip -t`, or drop the .gz from the name if it is not compressed.") from None


def _read_local(path: str) -> bytes:
  _check_file(path, os.path.exists(path), os.path.isdir(path))
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"{path}: cannot read the file ({e.strerror}). Check its "
                    "permissions.") from None


def _read_remote(path: str) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # gs:// and the like only
  _check_file(path, tf.io.gfile.exists(path), tf.io.gfile.isdir(path))
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.OpError as e:
    raise UserError(f"{path}: cannot read the file ({e.message}).") from None


def _check_file(path: str, exists: bool, is_directory: bool) -> None:
  if not exists:
    raise UserError(f"{path}: no such file. Check the path (relative paths are taken from "
                    f"{os.getcwd()}).")
  if is_directory:
    raise UserError(f"{path} is a directory, not a file. Name a file inside it.")


def decode(data: bytes, path: str) -> str:
  """The file's text; a byte that is not UTF-8 is an error naming its line."""
  try:
    return data.decode("utf-8-sig")  # -sig: spreadsheet exports start with a BOM
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}, line {line}: not UTF-8 ({e.reason}). Re-encode the file as "
                    "UTF-8, e.g. `iconv -f latin1 -t utf-8`.") from None


def parse_json(text: str | bytes) -> Any:
  """json.loads, raising JsonError for a text that is not JSON or nests too deeply."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise JsonError(f"not valid JSON ({e.msg} at column {e.colno})", e.msg, e.lineno) from None
  except UnicodeDecodeError as e:
    raise JsonError(f"not UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
  except RecursionError:
    raise JsonError("not readable JSON: lists and objects nested too deeply for Python's "
                    "parser (no record needs that many levels)") from None


def json_lines(data: bytes) -> Iterator[tuple[int, Any]]:
  """JSONL: per non-blank line, its 1-based number and its JSON value, or the JsonError
  saying why it has none (for the reader to raise or skip). Lines end at "\n" only, so
  a U+2028 inside a string stays inside it."""
  for number, line in enumerate(data.split(b"\n"), start=1):
    if number == 1:
      line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM opens the file, not the record
    if not line.strip():
      continue
    try:
      yield number, parse_json(line)
    except JsonError as e:
      yield number, e


MISSING = object()  # what `lookup` finds where a record has no such key


def lookup(raw: Any, key: str) -> Any:
  """raw[key], or the dotted path `a.b.0` through objects and lists; MISSING if absent."""
  if isinstance(raw, Mapping) and key in raw:  # a key may itself contain dots
    return raw[key]
  value = raw
  for part in key.split("."):
    if isinstance(value, Mapping) and part in value:
      value = value[part]
    elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
      value = value[int(part)]
    else:
      return MISSING
  return value


def value_problem(value: Any) -> str | None:
  """Why a scalar read from a file is no text to train on ("is nan: ..."), or None."""
  if (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
      and not math.isfinite(value)):
    return (f"is {value}: NaN, Infinity and numbers too large for a float (1e400) are not "
            "JSON numbers, and would be trained as the text 'nan' or 'inf'. Write the value "
            "(as a string if it is that large), or null where it is missing")
  if isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      return (f"holds a lone UTF-16 surrogate ({value[e.start]!r} at character {e.start}), "
              "which is not Unicode text and no tokenizer can encode. Fix the \\u escape in "
              "the file: a character beyond \\uffff is written as a pair, e.g. "
              "\\ud83d\\ude00")
  return None


class RecordProblem(Exception):
  """One bad record; `skip_or_raise` makes it a UserError or a skipped record."""


def check_on_error(on_error: str) -> None:
  if on_error not in ("raise", "skip"):
    raise UserError(f"on_error={on_error!r}; use 'raise' (stop at the first bad record) "
                    "or 'skip' (drop bad records and count them).")


def skip_or_raise(problem: Exception, on_error: str, problems: list[str]) -> None:
  """Raises the bad record's problem (on_error="raise"), or notes it among the first
  MAX_PROBLEMS `problems` for the caller, which counts the record as skipped."""
  if on_error == "raise":
    raise UserError(f"{problem} (Or pass on_error='skip' to drop such records and count "
                    "them.)") from None
  if len(problems) < MAX_PROBLEMS:
    problems.append(str(problem))


def preview(value: Any, limit: int = 60) -> str:
  """The value's repr, cut short for a message."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def keys(record: Mapping, limit: int = 12) -> str:
  """The record's first keys, sorted, for a message."""
  names = sorted(map(str, record))
  return str(names[:limit])[:-1] + (", ...]" if len(names) > limit else "]")

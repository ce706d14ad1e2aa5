"""Files under MODEL_DIR, on a local disk or in a bucket (gs://, s3://) alike.

On a pod, MODEL_DIR is a bucket that every host reaches. Every read and write of it
goes through etils.epath, which reaches gs:// through TensorFlow's gfile (or fsspec)
and local paths through os; orbax and TensorBoard reach buckets on their own.

Object stores differ from disks in two ways that matter here: an object appears only
once it is completely written, but nothing renames atomically; and nothing appends.
`write_atomically` and `MetricsWriter` (which rewrites its file instead of appending)
are written for both.
"""

import json
import os
from typing import Any

from etils import epath


def is_remote(path) -> bool:
  """True for a URL such as gs://bucket/run; False for a local path."""
  return "://" in os.fspath(path)


def absolute(path: str) -> str:
  """A local path made absolute (relative to the working directory); URLs as they are."""
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path, *parts: str) -> str:
  return os.path.join(os.fspath(path), *parts)


def exists(path) -> bool:
  return epath.Path(path).exists()


def isdir(path) -> bool:
  return epath.Path(path).is_dir()


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
  return sorted(p.name for p in epath.Path(path).iterdir())


def read_text(path) -> str:
  return epath.Path(path).read_text()


def read_json(path) -> Any:
  """The JSON value in `path` (ValueError where it is not JSON, as `json.loads`)."""
  return json.loads(read_text(path))


def write_json(path, value: Any, **dumps_options) -> None:
  """`value` as JSON (`json.dumps` with `dumps_options`), written atomically."""
  write_atomically(path, json.dumps(value, **dumps_options))


def remove(path) -> None:
  epath.Path(path).unlink()


def rmtree(path) -> None:
  if exists(path):
    epath.Path(path).rmtree()


def copy(source, target) -> None:
  """One file, into a directory that is created if need be."""
  makedirs(os.path.dirname(os.fspath(target)))
  epath.Path(source).copy(target, overwrite=True)


def rename(source, target) -> None:
  epath.Path(source).rename(target)


def modified_time(path) -> float:
  return epath.Path(path).stat().mtime


def write_atomically(path, text: str) -> None:
  """Writes `text` so that readers see the old file or the whole new one, never part.

  Locally: a temporary file renamed over the target. In a bucket an object only
  becomes visible once complete, so it is written in place.
  """
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    target.write_text(text)
    return
  temporary = f"{os.fspath(path)}.tmp.{os.getpid()}"
  with open(temporary, "w") as f:
    f.write(text)
  os.replace(temporary, os.fspath(path))

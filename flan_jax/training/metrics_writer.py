"""Where training metrics go: MODEL_DIR/metrics.jsonl and TensorBoard event files.

Only the primary host writes, so multi-host runs produce one log, not one per host.
A resumed run first `rewind`s both to its checkpoint's step, so the steps a killed run
logged past its last save appear once, as the resumed run logs them again.

In a bucket (gs://...), where nothing appends, metrics.jsonl is rewritten whole: at
most every `remote_flush_s` seconds and when the writer closes.
"""

import json
import time
from typing import Mapping

from clu import metric_writers

from flan_jax import paths
from flan_jax.model_dir import METRICS_FILE, TENSORBOARD_DIR


def read_records(model_dir: str) -> list[dict]:
  """The records of MODEL_DIR/metrics.jsonl (none if absent); a line cut short by a
  kill is left out."""
  path = paths.join(model_dir, METRICS_FILE)
  if not paths.exists(path):
    return []
  records = []
  for line in paths.read_text(path).splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def _lines(records: list[dict]) -> str:
  return "".join(json.dumps(record) + "\n" for record in records)


def rewind(model_dir: str, step: int) -> int:
  """Drops what was logged after `step` (and a line cut short by a kill); TensorBoard's
  events are rebuilt from the lines kept. Returns the number of lines dropped."""
  path = paths.join(model_dir, METRICS_FILE)
  if not paths.exists(path):
    return 0
  lines = paths.read_text(path).splitlines()
  kept = [r for r in read_records(model_dir) if r.get("step", 0) <= step]
  dropped = len([line for line in lines if line.strip()]) - len(kept)
  if not dropped:
    return 0
  paths.write_atomically(path, _lines(kept))
  tensorboard_dir = paths.join(model_dir, TENSORBOARD_DIR)
  paths.rmtree(tensorboard_dir)
  tensorboard = metric_writers.SummaryWriter(tensorboard_dir)
  for record in kept:
    record = dict(record)
    tensorboard.write_scalars(int(record.pop("step")), record)
  tensorboard.close()
  # Readers take a directory's event files in name order, and a name starts with the
  # second its writer opened: the run's next writer must not share this one's second,
  # or the rebuilt steps may be read after the new ones.
  time.sleep(1 - time.time() % 1)
  return dropped


class MetricsWriter:

  def __init__(self, model_dir: str, enabled: bool = True, remote_flush_s: float = 30.0):
    self._enabled = enabled
    if not enabled:
      return
    self._path = paths.join(model_dir, METRICS_FILE)
    self._remote = paths.is_remote(model_dir)
    if self._remote:
      self._records = read_records(model_dir)
      self._remote_flush_s, self._flushed_at = remote_flush_s, time.monotonic()
    else:
      self._jsonl = open(self._path, "a")
    self._tensorboard = metric_writers.SummaryWriter(paths.join(model_dir, TENSORBOARD_DIR))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **scalars}
    if self._remote:
      self._records.append(record)
      if time.monotonic() - self._flushed_at >= self._remote_flush_s:
        self._rewrite()
    else:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    self._tensorboard.write_scalars(int(step), scalars)

  def _rewrite(self) -> None:
    paths.write_atomically(self._path, _lines(self._records))
    self._flushed_at = time.monotonic()

  def close(self) -> None:
    if self._enabled:
      if self._remote:
        self._rewrite()
      else:
        self._jsonl.close()
      self._tensorboard.flush()
      self._tensorboard.close()

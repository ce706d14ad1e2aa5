"""Where training metrics go: MODEL_DIR/metrics.jsonl and TensorBoard event files.

Only the primary host writes, so multi-host runs produce one log, not one per host.
A resumed run first `rewind`s both to its checkpoint's step, so the steps a killed run
logged past its last save appear once, as the resumed run logs them again.
"""

import json
import os
import shutil
from typing import Mapping

from clu import metric_writers


TENSORBOARD_DIR = os.path.join("tensorboard", "train")


def rewind(model_dir: str, step: int) -> int:
  """Drops what was logged after `step` (and a line cut short by a kill); TensorBoard's
  events are rebuilt from the lines kept. Returns the number of lines dropped."""
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if record.get("step", 0) <= step:
        kept.append(record)
      else:
        dropped += 1
  if not dropped:
    return 0
  temporary = f"{path}.rewind"
  with open(temporary, "w") as f:
    f.writelines(json.dumps(record) + "\n" for record in kept)
  os.replace(temporary, path)
  shutil.rmtree(os.path.join(model_dir, TENSORBOARD_DIR), ignore_errors=True)
  tensorboard = metric_writers.SummaryWriter(os.path.join(model_dir, TENSORBOARD_DIR))
  for record in kept:
    tensorboard.write_scalars(int(record.pop("step")), record)
  tensorboard.close()
  return dropped


class MetricsWriter:

  def __init__(self, model_dir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a")
    self._tensorboard = metric_writers.SummaryWriter(os.path.join(model_dir, TENSORBOARD_DIR))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    self._tensorboard.write_scalars(int(step), scalars)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.flush()
      self._tensorboard.close()

"""Where training metrics go: MODEL_DIR/metrics.jsonl and TensorBoard event files.

Only the primary host writes, so multi-host runs produce one log, not one per host.
"""

import json
import os
from typing import Mapping

from clu import metric_writers


class MetricsWriter:

  def __init__(self, model_dir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a")
    self._tensorboard = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard", "train"))

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

"""Natural Instructions tasks from DATA_DIR/tasks/natural_instructions, one mixture per file.

The directory holds NI v2 task files (../shared/data has 24; a full
allenai/natural-instructions clone's `tasks/` has 1,600+ and registers the same
way, in seconds, since only headers are read). A DATA_DIR without the directory
registers nothing: the library's other datasets do not depend on it.

NI tasks show no answer options, so each is scored as generation: ROUGE-L and
normalised exact match, SuperNI's metrics (`NI_METRICS`).
"""

import os

from absl import logging
import tensorflow as tf

from flan_jax.data.natural_instructions import NI_METRICS, register_ni_directory


def register(data_dir: str) -> list[str]:
  """Registers every NI task file under data_dir; returns the per-task mixture names."""
  directory = os.path.join(data_dir, "tasks", "natural_instructions")
  if not tf.io.gfile.isdir(directory):
    logging.info("No Natural Instructions tasks at %s; skipped.", directory)
    return []
  return register_ni_directory(directory, metric_fns=NI_METRICS)

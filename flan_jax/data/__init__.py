"""Templates, sources, vocabularies, mixtures and feature conversion (no models, no training)."""

import logging

import tensorflow as tf

# tf.data runs on the host. Left alone, TensorFlow would also claim every GPU's memory
# and starve JAX, so it is shown none.
tf.config.set_visible_devices([], "GPU")


class _InapplicableSeqioNotices(logging.Filter):
  """Drops two seqio warnings that do not apply here and repeat once per task.

  - Rates of uncached tasks count input examples: that is what the examples-
    proportional rule means here.
  - Uncached FunctionDatasets reshuffle differently on restart: flan_jax resumes by
    replaying the same deterministic stream (`pipeline.train_batches`), so they don't.
  """

  _NOTICES = ("not cached so using number of input examples",
              "Using an uncached FunctionDataset for training")

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in self._NOTICES)


logging.getLogger("absl").addFilter(_InapplicableSeqioNotices())

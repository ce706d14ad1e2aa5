r"""Data-pipeline benchmarks: library registration time, packed throughput, packing efficiency.

  taskset -c 0 python benchmarks/data_pipeline.py --data_dir=../shared/data

Pins TensorFlow to one thread (and `taskset -c 0` pins the process to one core),
registers the task library with a real SentencePiece vocabulary, then pulls packed
prefix-LM batches from a mixture and counts non-padding tokens per second.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

flags.DEFINE_string("data_dir", "../shared/data", "The task library's data directory.")
flags.DEFINE_string("vocabulary", "tokenizers/llama2_sp32000.model",
                    "SentencePiece model under data_dir (or an absolute path).")
flags.DEFINE_string("mixture", "t0_collection", "Mixture to stream.")
flags.DEFINE_integer("inputs_length", 896, "Inputs feature length.")
flags.DEFINE_integer("targets_length", 128, "Targets feature length (packed length is the sum).")
flags.DEFINE_integer("batch_size", 32, "Rows per batch.")
flags.DEFINE_integer("warmup_batches", 5, "Batches before the clock starts.")
flags.DEFINE_integer("batches", 40, "Timed batches.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)

  started = time.perf_counter()
  import seqio
  from flan_jax.data import pipeline, vocabularies
  from flan_jax_tasks import library
  imported = time.perf_counter()
  path = FLAGS.vocabulary if os.path.isabs(FLAGS.vocabulary) else os.path.join(FLAGS.data_dir, FLAGS.vocabulary)
  library.register(FLAGS.data_dir, vocabulary=vocabularies.sentencepiece_vocabulary(path))
  registered = time.perf_counter()

  lengths = {"inputs": FLAGS.inputs_length, "targets": FLAGS.targets_length}
  batches = pipeline.train_batches(FLAGS.mixture, lengths, FLAGS.batch_size, seed=0)
  for _ in range(FLAGS.warmup_batches):
    next(batches)
  tokens = cells = 0
  clock = time.perf_counter()
  for _ in range(FLAGS.batches):
    segments = next(batches)["decoder_segment_ids"]
    tokens += int(np.count_nonzero(segments))
    cells += segments.size
  elapsed = time.perf_counter() - clock

  result = {
      "import_seconds": round(imported - started, 2),
      "registration_seconds": round(registered - imported, 2),
      "registered_tasks": len(seqio.TaskRegistry.names()),
      "registered_mixtures": len(seqio.MixtureRegistry.names()),
      "mixture": FLAGS.mixture,
      "packed_length": FLAGS.inputs_length + FLAGS.targets_length,
      "non_pad_tokens_per_second": round(tokens / elapsed),
      "packing_efficiency": round(tokens / cells, 4),
      "timed_batches": FLAGS.batches,
      "batch_size": FLAGS.batch_size,
      "cpu_affinity": sorted(os.sched_getaffinity(0)),
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)

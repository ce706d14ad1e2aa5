r"""Time to the first batch after resuming: with the saved data position, and by replay.

  python benchmarks/data_resume.py                       # the quickstart's mixture
  python benchmarks/data_resume.py --steps=20,2000 --batch_size=32

For each step N the stream is first run to N untimed, its `state()` kept as JSON (as a
checkpoint keeps it). Then two resumes are timed, each up to its first batch:
- restoring that state, which is what `flan_jax.train` does now;
- replaying N batches from the start, which is what it did before.
The last line is `restore_ratio=X.XX`: the restore time at the last N over the
restore time at the first N (1.0 means that resuming costs the same at any step).
"""

import json
import time

from absl import app, flags

flags.DEFINE_string("mixture", "default_train", "A registered mixture or task.")
flags.DEFINE_string("steps", "20,2000", "Resume points (comma-separated).")
flags.DEFINE_integer("batch_size", 32, "Rows per batch.")
flags.DEFINE_integer("repeats", 3, "Timed restores per step (the median is kept).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS
LENGTHS = {"inputs": 96, "targets": 32}


def main(argv):
  del argv
  import statistics
  import flan_jax_tasks.default_mixture  # noqa: F401
  from flan_jax.data.pipeline import train_batches

  def first_batch(**kwargs):
    start = time.perf_counter()
    next(train_batches(FLAGS.mixture, LENGTHS, FLAGS.batch_size, seed=0, **kwargs))
    return time.perf_counter() - start

  results = []
  for step in (int(s) for s in FLAGS.steps.split(",")):
    stream = train_batches(FLAGS.mixture, LENGTHS, FLAGS.batch_size, seed=0)
    for _ in range(step):
      next(stream)
    state = json.loads(json.dumps(stream.state()))
    restore = statistics.median(first_batch(state=state) for _ in range(FLAGS.repeats))
    replay = first_batch(skip_batches=step)
    results.append({"step": step, "restore_s": round(restore, 3), "replay_s": round(replay, 2),
                    "state_bytes": len(json.dumps(state))})
    print(json.dumps(results[-1]))
  report = {"mixture": FLAGS.mixture, "batch_size": FLAGS.batch_size, "lengths": LENGTHS,
            "date": time.strftime("%Y-%m-%d"), "results": results}
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(report, f, indent=1)
  print(f"restore_ratio={results[-1]['restore_s'] / results[0]['restore_s']:.2f}")


if __name__ == "__main__":
  app.run(main)

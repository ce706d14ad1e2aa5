r"""What a local judge costs on the whole of AlpacaEval, and what the cached rerun costs.

  python benchmarks/llm_judge.py --data_dir=../shared/data
  python benchmarks/llm_judge.py --data_dir=../shared/data --judge=/path/to/checkpoint

The judged "model" is text_davinci_003's outputs, against the gpt4_1106_preview
reference: 805 instructions, both orders, so 1,610 judge requests (fewer reach the
judge where two requests are identical). The same evaluation then runs again with the
same cache directory: it should send no requests. The default judge, stories260K, writes
stories rather than verdicts, so every judgement is unparsable; this measures the
pipeline (prompt building, batching, decoding, caching), not a judge's quality.
"""

import json
import os
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("data_dir", "../shared/data", "The shared data directory.")
flags.DEFINE_string("judge", None, "A checkpoint to judge with (default: stories260K).")
flags.DEFINE_integer("max_input_length", 512, "Judge prompt tokens (longer ones lose their front).")
flags.DEFINE_integer("max_tokens", 16, "Tokens the judge writes per request.")
flags.DEFINE_integer("batch_size", 16, "Judge requests per batch.")
flags.DEFINE_integer("max_examples", None, "Judge only the first N instructions.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from flan_jax.evaluation import alpaca_eval
  from flan_jax.llm_judge import make_judge
  checkpoint = FLAGS.judge or os.path.join(FLAGS.data_dir, "models", "stories260K-hf")
  reference = alpaca_eval.read_reference(FLAGS.data_dir, max_examples=FLAGS.max_examples)
  outputs = alpaca_eval.read_model_outputs(
      os.path.join(FLAGS.data_dir, "eval", "alpaca_eval", "text_davinci_003_model_outputs.json"),
      [r["instruction"] for r in reference])
  cache_dir = tempfile.mkdtemp(prefix="llm_judge_cache_")
  results = []
  for run in ("first", "cached rerun"):
    start = time.perf_counter()
    judge = make_judge(checkpoint=checkpoint, cache_dir=cache_dir, max_tokens=FLAGS.max_tokens,
                       max_input_length=FLAGS.max_input_length, batch_size=FLAGS.batch_size)
    loaded = time.perf_counter() - start
    result = alpaca_eval.evaluate(judge, outputs, FLAGS.data_dir,
                                  max_examples=FLAGS.max_examples)
    seconds = time.perf_counter() - start
    row = {"run": run, "seconds": round(seconds, 1), "load_seconds": round(loaded, 1),
           "requests_sent": result["judge_requests"],
           "requests_per_second": round(result["judge_requests"] / (seconds - loaded), 2),
           **{k: result[k] for k in ("n", "n_judged", "unparsable", "unparsable_judgements")}}
    print(json.dumps(row), flush=True)
    results.append(row)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"judge": checkpoint, "max_input_length": FLAGS.max_input_length,
                 "max_tokens": FLAGS.max_tokens, "batch_size": FLAGS.batch_size,
                 "runs": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)

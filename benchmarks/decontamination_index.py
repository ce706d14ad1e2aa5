r"""Build time and memory of the decontamination index over MMLU + BBH + GSM8K test sets.

  PYTHONPATH=$PWD:$PWD/.pp python benchmarks/decontamination_index.py \
      --data_dir=../shared/data --rule=13-gram

Builds the index from scratch into a fresh cache directory (timed), reads it back
from the cache (timed), and looks up the rendered test prompts of MMLU's first
subject (100, all hits; timed). Peak resident memory is the process's
`ru_maxrss`, which includes TensorFlow and the registered task library (printed
before the build too, so the index's share shows).
"""

import argparse
import json
import resource
import tempfile
import time

from flan_jax.data import decontamination as dc
from flan_jax.data import decontamination_index as di


def rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--rule", default="13-gram", choices=sorted(di.RULES))
  parser.add_argument("--against", default="mmlu_0shot,bbh_direct,gsm8k")
  args = parser.parse_args()
  from flan_jax_tasks import library
  library.register(args.data_dir)
  against = args.against.split(",")
  before = rss_mib()
  with tempfile.TemporaryDirectory() as cache:
    started = time.perf_counter()
    index = di.eval_index(against, args.rule, cache_dir=cache)
    build_s = time.perf_counter() - started
    after_build = rss_mib()
    started = time.perf_counter()
    again = di.eval_index(against, args.rule, cache_dir=cache)
    load_s = time.perf_counter() - started
    assert len(again) == len(index)
    probes = [texts[0] for texts in dc.task_texts(dc.resolve_tasks("mmlu_0shot")[0], "test",
                                                  ["inputs_pretokenized"])]
    started = time.perf_counter()
    hits = sum(index.hit(p) is not None for p in probes)
    lookup_ms = 1000 * (time.perf_counter() - started) / len(probes)
  print(json.dumps({
      "rule": args.rule, "against": against, "eval_tasks": len(index.sources),
      "texts": index.num_texts, "ngrams": len(index), "index_mib": round(index.nbytes / 2**20, 1),
      "build_s": round(build_s, 1), "cache_load_s": round(load_s, 2),
      "rss_before_mib": round(before), "peak_rss_mib": round(after_build),
      "probe_hits": f"{hits}/{len(probes)}", "lookup_ms_per_text": round(lookup_ms, 2)}, indent=1))


if __name__ == "__main__":
  main()

r"""The Self-Instruct ROUGE-L filter at 10k instructions: ours against rouge-score pair by pair.

  python benchmarks/self_instruct_rouge.py --data_dir=../shared/data \
      --output=benchmarks/results/self_instruct_rouge_10k.json

Real instructions stand in for generated ones: Alpaca's demo set, LIMA, AlpacaEval,
Self-Instruct's seed and user-oriented tasks, MT-Bench and Vicuna questions, and GSM8K
questions to make up the number (10k+ in all; those the length filter would reject,
over 150 words, are left out, as the loop never scores them). Shuffled with a fixed
seed, they are fed to the filter one by one as the loop does: each is checked
against the pool and added when below the threshold, so the pool grows to ~10k. Then
`--queries` further instructions are checked against the full pool, and the first
`--brute_force` of them also the way the reference scripts do, calling rouge-score's
`RougeScorer.score` against every member, to compare time and the best score.
"""

import json
import os
import random
import statistics
import time

from absl import app, flags

flags.DEFINE_string("data_dir", "../shared/data", "The shared data directory.")
flags.DEFINE_integer("pool_size", 10_000, "Instructions fed through the filter.")
flags.DEFINE_integer("queries", 500, "Instructions then checked against the full pool.")
flags.DEFINE_integer("brute_force", 5, "Of those, checked with rouge-score pair by pair too.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def instructions(data_dir: str) -> list[str]:
  join = lambda *parts: os.path.join(data_dir, *parts)
  texts = [r["instruction"] for r in _json(join("instruct", "alpaca",
                                                "alpaca_en_demo_llamafactory.json"))]
  texts += [r["instruction"] for r in _json(join("instruct", "lima", "lima_llamafactory.json"))]
  texts += [r["instruction"] for r in _json(join("eval", "alpaca_eval",
                                                 "gpt4_1106_preview_model_outputs.json"))]
  for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
    texts += [r["instruction"] for r in _jsonl(join("instruct", "self_instruct", name))]
  for name in sorted(os.listdir(join("eval", "open_ended"))):
    for r in _jsonl(join("eval", "open_ended", name)):
      texts.append(r["turns"][0])
  for name in ("train.jsonl", "test.jsonl"):
    texts += [r["question"] for r in _jsonl(join("eval", "gsm8k", name))]
  return texts


def main(argv):
  del argv
  from rouge_score import rouge_scorer

  from flan_jax.data import instruction_filters as filters
  texts = [filters.clean(t) for t in instructions(FLAGS.data_dir)]
  usable = [t for t in dict.fromkeys(texts) if filters.text_problem(t) is None]
  random.Random(0).shuffle(usable)
  needed = FLAGS.pool_size + FLAGS.queries
  if len(usable) < needed:
    raise SystemExit(f"Only {len(usable)} usable instructions; need {needed}.")
  stream, queries = usable[:FLAGS.pool_size], usable[FLAGS.pool_size:needed]

  pool = filters.RougePool()
  rejected = 0
  start = time.perf_counter()
  for text in stream:
    if pool.too_similar(text):
      rejected += 1
    else:
      pool.add(text)
  grow_s = time.perf_counter() - start
  grow_checks = pool.exact_checks

  pool.exact_checks = 0
  times = []
  for text in queries:
    start = time.perf_counter()
    pool.most_similar(text)
    times.append(time.perf_counter() - start)

  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  brute_times, agree = [], 0
  for text in queries[:FLAGS.brute_force]:
    start = time.perf_counter()
    brute = max(scorer.score(member, text)["rougeL"].fmeasure for member in pool.texts)
    brute_times.append(time.perf_counter() - start)
    ours, _ = pool.most_similar(text)
    agree += ours == brute or (brute < pool.threshold and ours < pool.threshold)

  result = {
      "pool_members": len(pool), "fed": len(stream), "rejected_while_growing": rejected,
      "grow_seconds": round(grow_s, 2),
      "grow_ms_per_instruction": round(1000 * grow_s / len(stream), 3),
      "grow_exact_lcs": grow_checks,
      "query_ms_mean": round(1000 * statistics.mean(times), 3),
      "query_ms_median": round(1000 * statistics.median(times), 3),
      "query_ms_max": round(1000 * max(times), 3),
      "query_exact_lcs_per_query": round(pool.exact_checks / len(queries), 2),
      "rouge_score_ms_per_query": round(1000 * statistics.mean(brute_times), 1),
      "speedup": round(statistics.mean(brute_times) / statistics.mean(times), 1),
      "brute_force_queries_agreeing": f"{agree}/{len(brute_times)}",
  }
  print(json.dumps(result, indent=2))
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)

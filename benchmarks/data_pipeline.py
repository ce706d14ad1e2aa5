r"""Data-pipeline throughput: flan_jax's packed batches against tokenizers + datasets, per core and on all cores.

  python -m benchmarks.data_pipeline --data_dir=../shared/data --workers=0,1,2 --compare=hf
  taskset -c 0 python -m benchmarks.data_pipeline --data_dir=../shared/data --workers=0

Registers the task library with a real SentencePiece vocabulary (Llama-2's), then pulls
packed prefix-LM batches from a mixture (the T0 collection at 1,024 tokens by default)
and counts non-padding tokens per second, once for each number of data workers in
--workers (0: everything in this process; N: N worker processes render and tokenize,
this process draws and packs, `flan_jax/data/workers.py`).

The peer is what a PyTorch SFT recipe does with the same text: the prompts and targets
our run rendered (so both sides hold the same examples) go into a `datasets.Dataset`,
are tokenized by the Hugging Face fast tokenizer converted from the same SentencePiece
model (`Dataset.map(batched=True, num_proc=N)`; Rust, batched), then concatenated and cut
into rows of the same length (the `group_texts` recipe, which drops the tail and lets
examples span rows: cheaper than best-fit packing, and it pads nothing). The peer does
no template rendering, so the comparison favours it. Rows are counted alike: non-padding
tokens per second of wall time.

Each setting runs --rounds times alternating ours and theirs, and rates are medians.
The last line is `ratio_vs_hf=X.XX mfu=n/a` for the highest worker count (ours over
theirs; a data pipeline does no model FLOPs). Results go to
benchmarks/results/data_pipeline_<mixture>.json.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data", help="the task library's data")
  parser.add_argument("--vocabulary", default="tokenizers/llama2_sp32000.model",
                      help="SentencePiece model under data_dir (or an absolute path)")
  parser.add_argument("--mixture", default="t0_collection")
  parser.add_argument("--inputs_length", type=int, default=896)
  parser.add_argument("--targets_length", type=int, default=128,
                      help="the packed row is inputs_length + targets_length tokens")
  parser.add_argument("--batch_size", type=int, default=32, help="rows per batch")
  parser.add_argument("--batches", type=int, default=40, help="timed batches per round")
  parser.add_argument("--workers", default="0,1,all",
                      help="comma-separated worker counts; 'all' is one per core available")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--compare", default="hf", choices=["hf", "none"])
  parser.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  return args


def worker_counts(spec: str) -> list[int]:
  cores = len(os.sched_getaffinity(0))
  return [cores if part.strip() == "all" else int(part) for part in spec.split(",")]


def ours(name: str, lengths: dict, batch_size: int, batches: int, workers: int,
         skip_batches: int) -> tuple[float, int]:
  """Non-pad tokens/s of `batches` batches after `skip_batches` (warm-up), and how many
  examples the stream drew meanwhile."""
  from flan_jax.data import pipeline
  stream = pipeline.train_batches(name, lengths, batch_size, seed=0, workers=workers)
  for _ in range(skip_batches):
    next(stream)
  drawn = stream.state()["examples"]["draws"]
  tokens, started = 0, time.perf_counter()
  for _ in range(batches):
    tokens += int(np.count_nonzero(next(stream)["decoder_segment_ids"]))
  seconds = time.perf_counter() - started
  drawn = stream.state()["examples"]["draws"] - drawn
  if workers:
    stream._examples.close()  # noqa: SLF001 - the benchmark ends its workers now, not at exit
  return tokens / seconds, drawn


def rendered_texts(name: str, lengths: dict, count: int) -> list[tuple[str, str]]:
  """The first `count` examples our stream draws, as (prompt, target) text."""
  from flan_jax.data import registry, task_reader
  stream = task_reader.mixture_examples(registry.get_mixture_or_task(name), "train",
                                        sequence_length=lengths, seed=0)
  text = lambda v: v.decode() if isinstance(v, bytes) else v
  return [(text(e["inputs_pretokenized"]), text(e["targets_pretokenized"]))
          for e, _ in zip(stream, range(count))]


def hf_tokenizer(sentencepiece_path: str):
  """transformers' fast tokenizer converted from the same SentencePiece model (it reads a
  directory holding tokenizer.model; built from `vocab_file=` alone it encodes to nothing)."""
  import shutil
  import tempfile
  from transformers import AutoTokenizer
  directory = tempfile.mkdtemp(prefix="hf_tokenizer_")
  shutil.copy(sentencepiece_path, os.path.join(directory, "tokenizer.model"))
  tokenizer = AutoTokenizer.from_pretrained(directory)
  ids = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
  if not ids:
    raise RuntimeError(f"transformers could not load {sentencepiece_path} as a fast tokenizer.")
  return tokenizer


def theirs(texts: list[tuple[str, str]], tokenizer, row_length: int, workers: int) -> tuple[float, int]:
  """Tokenize with datasets + the fast tokenizer, then concatenate and cut into rows."""
  import datasets
  datasets.disable_progress_bars()
  dataset = datasets.Dataset.from_dict({"prompt": [p for p, _ in texts],
                                        "completion": [c for _, c in texts]})
  eos = tokenizer.eos_token_id

  def tokenize(batch):
    prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
    completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [p + c + [eos] for p, c in zip(prompts, completions)]}

  started = time.perf_counter()
  tokenized = dataset.map(tokenize, batched=True, num_proc=workers or None,
                          remove_columns=["prompt", "completion"], load_from_cache_file=False,
                          keep_in_memory=True)
  ids = np.concatenate([np.asarray(x, np.int32) for x in tokenized["input_ids"]])
  rows = ids[:len(ids) // row_length * row_length].reshape(-1, row_length)
  seconds = time.perf_counter() - started
  return rows.size / seconds, int(rows.size)


def main(argv=None) -> dict:
  args = parse_args(argv)
  started = time.perf_counter()
  import tensorflow as tf
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  import seqio
  from absl import logging
  from flan_jax.data import vocabularies
  from flan_jax_tasks import library
  logging.set_verbosity(logging.ERROR)
  imported = time.perf_counter()
  path = (args.vocabulary if os.path.isabs(args.vocabulary)
          else os.path.join(args.data_dir, args.vocabulary))
  library.register(args.data_dir, vocabulary=vocabularies.sentencepiece_vocabulary(path))
  registered = time.perf_counter()

  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  row_length = args.inputs_length + args.targets_length
  # Warm-up: the first batches load each drawn task's records; later rounds skip them.
  warmup = 5
  ours(args.mixture, lengths, args.batch_size, warmup, 0, 0)
  # Enough examples for the timed batches (a 1,024-token row holds a few T0 examples).
  texts = rendered_texts(args.mixture, lengths, 8 * args.batch_size * args.batches)
  tokenizer = hf_tokenizer(path) if args.compare == "hf" else None

  settings = []
  for workers in worker_counts(args.workers):
    rates = {"flan_jax": [], "hf": []}
    for _ in range(args.rounds):  # alternate, so a noisy neighbour hits both alike
      rate, drawn = ours(args.mixture, lengths, args.batch_size, args.batches, workers, warmup)
      rates["flan_jax"].append(rate)
      if tokenizer is not None:  # as many examples as our timed batches drew
        rates["hf"].append(theirs(texts[:drawn], tokenizer, row_length, workers)[0])
    row = {"workers": workers,
           "flan_jax_tokens_per_second": round(statistics.median(rates["flan_jax"])),
           "flan_jax_tokens_per_second_per_process": round(
               statistics.median(rates["flan_jax"]) / max(workers, 1))}
    if rates["hf"]:
      row["hf_tokens_per_second"] = round(statistics.median(rates["hf"]))
      row["ratio_vs_hf"] = round(row["flan_jax_tokens_per_second"] / row["hf_tokens_per_second"], 2)
    settings.append(row)
    print(json.dumps(row), flush=True)

  result = {
      "date": datetime.date.today().isoformat(),
      "command": "python -m benchmarks.data_pipeline " + " ".join(args.argv),
      "machine": {"platform": platform.platform(), "processor": platform.processor(),
                  "cpu_affinity": sorted(os.sched_getaffinity(0)), "python": platform.python_version()},
      "import_seconds": round(imported - started, 2),
      "registration_seconds": round(registered - imported, 2),
      "registered_tasks": len(seqio.TaskRegistry.names()),
      "mixture": args.mixture, "packed_length": row_length, "batch_size": args.batch_size,
      "timed_batches": args.batches, "rounds": args.rounds, "settings": settings,
  }
  output = args.output or os.path.join(os.path.dirname(__file__), "results",
                                       f"data_pipeline_{args.mixture}.json")
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  last = settings[-1]
  print(f"ratio_vs_hf={last.get('ratio_vs_hf', float('nan')):.2f} mfu=n/a")
  return result


if __name__ == "__main__":
  main()

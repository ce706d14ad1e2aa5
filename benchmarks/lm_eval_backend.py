r"""Scoring speed of lm-eval's loglikelihood requests: the flan_jax backend against
lm-eval's Hugging Face backend (HFLM), same checkpoint, same requests, one process.

  python benchmarks/lm_eval_backend.py --data_dir=../shared/data            # stories260K
  python benchmarks/lm_eval_backend.py --data_dir=../shared/data --model=llama_5m

The requests are MMLU's, as lm-eval's `mmlu` task writes them (the subject's
description, the question, its four choices, "Answer:"; the continuations " A" to
" D"), for the first --questions test questions of each --subjects subject. Both
backends answer the same list with the same batch size (HFLM: requests per forward
pass; flan_jax: rows, each packing several requests). A warm-up pass (flan_jax's
compilation, timed apart) comes first, then --repeats timed passes each, alternating;
the rates are medians (every pass's time, and the machine's load average at the end, are
in the JSON). Answers are checked to agree (within 1e-4) before timing.

`llama_5m` is a random Llama (6 layers, 256 wide) written by transformers with
stories260K's tokenizer, for a model whose compute is not lost in per-call overhead.
The last line is `ratio_vs_hf=X.XX` (requests/s, ours over theirs); --output writes
the numbers as JSON.
"""

import csv
import json
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

flags.DEFINE_enum("model", "stories260K", ["stories260K", "llama_5m"], "Which checkpoint.")
flags.DEFINE_string("data_dir", "../shared/data", "Holds models/stories260K-hf and eval/mmlu.")
flags.DEFINE_list("subjects", ["anatomy", "astronomy", "world_religions"], "MMLU subjects.")
flags.DEFINE_integer("questions", 40, "Test questions per subject (4 requests each).")
flags.DEFINE_integer("batch_size", 16, "Requests (HFLM) or rows (flan_jax) per forward pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes per backend.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

LLAMA_5M = dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def _checkpoint(directory: str) -> str:
  stories = os.path.join(FLAGS.data_dir, "models", "stories260K-hf")
  if FLAGS.model == "stories260K":
    return stories
  import torch
  import transformers
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_5M)).save_pretrained(directory)
  shutil.copy(os.path.join(stories, "tokenizer.model"), directory)
  return directory


def _requests():
  """MMLU zero-shot loglikelihood requests as lm-eval builds them."""
  from lm_eval.api.instance import Instance
  requests = []
  for subject in FLAGS.subjects:
    path = os.path.join(FLAGS.data_dir, "eval", "mmlu", "test", f"{subject}_test.csv")
    with open(path, encoding="utf-8") as f:
      rows = list(csv.DictReader(f))[:FLAGS.questions]
    description = (f"The following are multiple choice questions (with answers) about "
                   f"{subject.replace('_', ' ')}.\n\n")
    for row in rows:
      choices = "".join(f"\n{letter}. {row[f'choice{k}']}" for k, letter in enumerate("ABCD"))
      context = f"{description}{row['question'].strip()}{choices}\nAnswer:"
      for letter in "ABCD":
        requests.append(Instance("loglikelihood", {}, (context, f" {letter}"), len(requests)))
  return requests


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch
  import transformers
  from lm_eval.models.huggingface import HFLM

  import flan_jax.lm_eval as flan_jax_lm_eval

  requests = _requests()
  with tempfile.TemporaryDirectory() as tmp:
    path = _checkpoint(tmp)
    ours = flan_jax_lm_eval.load(path, batch_size=FLAGS.batch_size)
    theirs = HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=FLAGS.batch_size)
  tokens = sum(len(ours.tok_encode(r.args[0] + r.args[1])) for r in requests)

  compile_s = _timed(lambda: ours.loglikelihood(requests, disable_tqdm=True))
  got = ours.loglikelihood(requests, disable_tqdm=True)
  expected = theirs.loglikelihood(requests, disable_tqdm=True)  # also HFLM's warm-up
  worst = float(np.max(np.abs(np.array([g[0] for g in got]) - [e[0] for e in expected])))
  assert worst < 1e-4 and [g[1] for g in got] == [e[1] for e in expected], worst
  ours_times, theirs_times = [], []
  for _ in range(FLAGS.repeats):  # alternate, so a noisy neighbour hits both alike
    ours_times.append(_timed(lambda: ours.loglikelihood(requests, disable_tqdm=True)))
    theirs_times.append(_timed(lambda: theirs.loglikelihood(requests, disable_tqdm=True)))
  ours_rate = len(requests) / statistics.median(ours_times)
  theirs_rate = len(requests) / statistics.median(theirs_times)
  result = {
      "model": FLAGS.model, "parameters": int(sum(p.numel() for p in theirs.model.parameters())),
      "requests": len(requests), "tokens": tokens, "subjects": FLAGS.subjects,
      "batch_size": FLAGS.batch_size, "max_abs_difference": worst,
      "flan_jax_requests_per_s": round(ours_rate, 1),
      "hf_requests_per_s": round(theirs_rate, 1),
      "flan_jax_pass_s": [round(t, 2) for t in ours_times],
      "hf_pass_s": [round(t, 2) for t in theirs_times],
      "flan_jax_first_pass_s": round(compile_s, 2), "torch_threads": torch.get_num_threads(),
      "load_average": [round(x, 1) for x in os.getloadavg()],
      "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__, "devices": str(jax.devices()[0].platform),
      "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.output:
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=1)
  print(f"ratio_vs_hf={ours_rate / theirs_rate:.2f}")


if __name__ == "__main__":
  app.run(main)

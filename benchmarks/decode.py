r"""Decode speed: flan_jax's cached decoding against transformers' `generate`, same model.

  python benchmarks/decode.py                      # a ~6M-parameter Llama, batch 8
  python benchmarks/decode.py --model=stories260K --data_dir=../shared/data

Both run one Hugging Face checkpoint (a random Llama written by transformers, or the
pretrained stories260K), the same left-padded prompts and the same number of new
tokens (EOS disabled, so every row decodes to the end), alternating, on the same CPU.
Compilation is timed apart; the rates are medians of --repeats runs. The last line is
`ratio_vs_hf=X.XX` (new tokens/s, ours over theirs); --output writes the numbers as JSON.
Needs jax, flax, torch and transformers (no TensorFlow, seqio or gin).
"""

import json
import os
import statistics
import tempfile
import time

from absl import app, flags

flags.DEFINE_enum("model", "llama_6m", ["llama_6m", "stories260K"], "Which checkpoint.")
flags.DEFINE_string("data_dir", "../shared/data", "Holds models/stories260K-hf.")
flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
flags.DEFINE_integer("prompt_length", 32, "Prompt tokens (rows are left-padded to it).")
flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
flags.DEFINE_enum("strategy", "greedy", ["greedy", "beam"], "Greedy, or beam search (4 beams).")
flags.DEFINE_integer("repeats", 5, "Timed runs per framework.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

LLAMA_6M = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                tie_word_embeddings=True)


def _checkpoint(directory: str) -> str:
  if FLAGS.model == "stories260K":
    return os.path.join(FLAGS.data_dir, "models", "stories260K-hf")
  import torch
  import transformers
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_6M))
  model.save_pretrained(directory)
  return directory


def _prompts(vocab_size: int):
  import numpy as np
  rng = np.random.default_rng(0)
  tokens = np.zeros((FLAGS.batch_size, FLAGS.prompt_length), np.int32)
  mask = np.zeros_like(tokens)
  for row in range(FLAGS.batch_size):  # lengths from half to all of the buffer
    n = FLAGS.prompt_length // 2 + (row * FLAGS.prompt_length // 2) // max(FLAGS.batch_size, 1)
    tokens[row, -n:] = rng.integers(3, vocab_size, n)
    tokens[row, -n] = 1  # BOS
    mask[row, -n:] = 1
  return tokens, mask


def _timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  import jax
  import torch
  import transformers

  from flan_jax.evaluation.decoding import DecodeConfig, make_generate
  from flan_jax.models import hf_llama
  from flan_jax.models.families import DecoderOnly

  with tempfile.TemporaryDirectory() as tmp:
    path = _checkpoint(tmp)
    config, params = hf_llama.load_hf_checkpoint(path)
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  tokens, mask = _prompts(config.vocab_size)
  beams = 4 if FLAGS.strategy == "beam" else 1
  decode = DecodeConfig(strategy=FLAGS.strategy, num_beams=beams, length_penalty=1.0)
  ours = make_generate(DecoderOnly(config, bos_id=1), jax.device_put(params), FLAGS.new_tokens,
                       eos_id=-1, config=decode)
  ids, attention = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

  def run_theirs():
    with torch.no_grad():
      return theirs_model.generate(ids, attention_mask=attention, do_sample=False,
                                   num_beams=beams, max_new_tokens=FLAGS.new_tokens,
                                   min_new_tokens=FLAGS.new_tokens, pad_token_id=0)

  start = time.perf_counter()
  ours(tokens, mask)
  compile_s = time.perf_counter() - start
  run_theirs()  # warm-up
  ours_times, theirs_times = [], []
  for _ in range(FLAGS.repeats):  # alternate, so a noisy neighbour hits both alike
    ours_times += _timed(lambda: ours(tokens, mask), 1)
    theirs_times += _timed(run_theirs, 1)
  new_tokens = FLAGS.batch_size * FLAGS.new_tokens
  ours_rate = new_tokens / statistics.median(ours_times)
  theirs_rate = new_tokens / statistics.median(theirs_times)
  result = {
      "model": FLAGS.model, "parameters": int(sum(p.numel() for p in theirs_model.parameters())),
      "batch_size": FLAGS.batch_size, "prompt_length": FLAGS.prompt_length,
      "new_tokens": FLAGS.new_tokens, "strategy": FLAGS.strategy,
      "flan_jax_new_tokens_per_s": round(ours_rate, 1),
      "transformers_new_tokens_per_s": round(theirs_rate, 1),
      "flan_jax_compile_s": round(compile_s, 2), "torch_threads": torch.get_num_threads(),
      "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
      "devices": str(jax.devices()[0].platform), "cpus": os.cpu_count(),
      "date": time.strftime("%Y-%m-%d"),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.output:
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=1)
  print(f"ratio_vs_hf={ours_rate / theirs_rate:.2f}")


if __name__ == "__main__":
  app.run(main)

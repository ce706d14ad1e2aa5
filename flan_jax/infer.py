r"""Generate from, or score options with, a checkpoint: `python -m flan_jax.infer`.

  echo '{"inputs": "Which is larger, 7 or 3?", "options": ["7", "3"]}' | \
      python -m flan_jax.infer --checkpoint=/tmp/flan_jax_quickstart --input=-
  python -m flan_jax.infer --checkpoint=DIR --interactive --strategy=sample --temperature=0.7
  python -m flan_jax.infer --checkpoint=/tmp/flan_jax_chat --interactive --chat

--checkpoint is a run's MODEL_DIR (latest step, or --step), an orbax checkpoint from
`convert --to_orbax`, or a Hugging Face directory. A LoRA run's MODEL_DIR brings its
recorded base; --adapter=DIR puts a PEFT adapter directory or a LoRA run's adapters on
top of the base --checkpoint. Adapters are served merged into their weights.

--input is JSONL (`-`: stdin): one object per line with "inputs" and optionally
"options"; each comes back on --output (default stdout) with "prediction", and with
options their "scores" (summed log-likelihoods). With --chat, each line has "messages" (system / user / assistant
turns, the last the user's) and "prediction" is the assistant's reply, the prompt
rendered with the chat template the run recorded. The job is `inference`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from flan_jax import inference  # noqa: E402
from flan_jax.errors import UserError, exit_on_user_error  # noqa: E402
from flan_jax.evaluation.decoding import STRATEGIES, DecodeConfig  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A run's MODEL_DIR, an orbax or a Hugging Face checkpoint.")
flags.DEFINE_integer("step", None, "The run's checkpoint step (default: the latest); with "
                     "--adapter=RUN, the adapter run's.")
if "adapter" not in flags.FLAGS:  # eval defines the same flag: both may load in one process
  flags.DEFINE_string("adapter", None, "LoRA adapters on top of the checkpoint: a PEFT adapter "
                      "directory or a LoRA run's MODEL_DIR.")
flags.DEFINE_string("input", None, "JSONL requests, or - for stdin.")
flags.DEFINE_string("output", "-", "Where the JSONL answers go (- for stdout).")
flags.DEFINE_bool("interactive", False, "A prompt loop in the terminal instead of --input.")
flags.DEFINE_string("vocabulary", None, "The tokenizer the model was trained with, if the "
                    "checkpoint has none of its own (default: bytes).")
flags.DEFINE_enum("strategy", "greedy", list(STRATEGIES), "How to pick tokens.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens of this total probability.")
flags.DEFINE_integer("num_beams", 4, "Beam search: beams per prompt.")
flags.DEFINE_float("length_penalty", 1.0, "Beam search: score / length**length_penalty.")
flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed gives the same text.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
flags.DEFINE_integer("max_input_length", 512, "Prompt tokens kept (longer prompts lose their front).")
flags.DEFINE_multi_string("stop", [], "Cut each completion before this string (repeatable).")
flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")
flags.DEFINE_bool("length_normalize", False, "Options: rank by mean token log-likelihood.")
flags.DEFINE_bool("chat", False, 'Conversations: requests have "messages" (--interactive: '
                  "one conversation), rendered with the chat template training used.")
flags.DEFINE_string("chat_template", None, "With --chat: a built-in template (chatml, llama2, "
                    "llama3, zephyr) or a path (default: the one the run recorded in MODEL_DIR).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # keep the terminal for the answers
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.checkpoint:
    raise UserError("--checkpoint is required: a run's MODEL_DIR, an orbax or a HF directory.")
  if not FLAGS.interactive and not FLAGS.input:
    raise UserError("Give --input=FILE (JSONL, or - for stdin) or --interactive.")
  decode = DecodeConfig(strategy=FLAGS.strategy, temperature=FLAGS.temperature,
                        top_k=FLAGS.top_k, top_p=FLAGS.top_p, num_beams=FLAGS.num_beams,
                        length_penalty=FLAGS.length_penalty, seed=FLAGS.seed)
  predictor = inference.load_predictor(
      FLAGS.checkpoint, step=FLAGS.step, vocabulary_path=FLAGS.vocabulary,
      max_input_length=FLAGS.max_input_length, max_new_tokens=FLAGS.max_new_tokens,
      decode=decode, stop=tuple(FLAGS.stop), batch_size=FLAGS.batch_size, chat=FLAGS.chat,
      chat_template=FLAGS.chat_template, adapter=FLAGS.adapter)
  if FLAGS.interactive:
    inference.interactive(predictor, chat=FLAGS.chat)
    return
  lines, source = inference.open_input(FLAGS.input)
  try:
    out = sys.stdout if FLAGS.output == "-" else open(FLAGS.output, "w", encoding="utf-8")
  except OSError as e:
    raise UserError(f"--output {FLAGS.output!r} cannot be written ({e.strerror}).") from None
  try:
    count = inference.run_jsonl(predictor, lines, out, source, seed=FLAGS.seed,
                                length_normalize=FLAGS.length_normalize, chat=FLAGS.chat)
  finally:
    if out is not sys.stdout:
      out.close()
  print(f"{count} requests answered.", file=sys.stderr)


if __name__ == "__main__":
  app.run(exit_on_user_error(main))

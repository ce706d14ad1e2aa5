r"""Look at tasks and mixtures as the model sees them: `python -m flan_jax.inspect_data`.

  python -m flan_jax.inspect_data --list [--data_dir=DIR]
  python -m flan_jax.inspect_data --mixture=default_train [--plot=rates.png]
  python -m flan_jax.inspect_data --task=default_add --num_examples=3
  python -m flan_jax.inspect_data --chat=conversations.jsonl --chat_template=llama3 \
      --vocabulary=MODEL_DIR

Prints the report of `flan_jax.data.inspect`: rendered examples with the trained-on
tokens between ⟦ ⟧, per-task counts, rates, token lengths, truncation and packing,
and a PNG of the mixture's proportions. --chat registers a conversation file as the
task `chat`. The built-in default mixture is always registered; --data_dir also
registers the real task library from that directory. Registering the task library
is an entry point's work (it sits above `flan_jax.data`), so it is done here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from flan_jax import job  # noqa: E402
from flan_jax.data import chat_examples, registry  # noqa: E402
from flan_jax.data.inspect import inspect  # noqa: E402
from flan_jax.errors import UserError, exit_on_user_error  # noqa: E402

flags.DEFINE_string("data_dir", None, "Register the task library from this directory.")
flags.DEFINE_bool("list", False, "Print every registered task and mixture name, one per line.")
flags.DEFINE_string("task", None, "A task to inspect.")
flags.DEFINE_string("mixture", None, "A mixture to inspect.")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_integer("num_examples", 2, "Rendered examples to show.")
flags.DEFINE_integer("sample_size", 200, "Examples per task sampled for the statistics.")
flags.DEFINE_integer("inputs_length", 512, "TASK_FEATURE_LENGTHS['inputs'] to check against.")
flags.DEFINE_integer("targets_length", 128, "TASK_FEATURE_LENGTHS['targets'] to check against.")
flags.DEFINE_string("plot", None, "Where to write the proportions PNG (default: NAME_rates.png).")
flags.DEFINE_string("chat", None, "A conversation file (messages, ShareGPT, Alpaca or OASST "
                    "JSONL/JSON) to inspect as the task `chat`.")
flags.DEFINE_string("chat_template", "chatml", "With --chat: a built-in template or a path.")
flags.DEFINE_string("vocabulary", None, "What --chat and --data_dir's task library tokenize "
                    "with, as train's VOCABULARY_PATH: a SentencePiece .model, a tokenizer.json "
                    "or a model directory (default: bytes).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments {argv[1:]}.")
  logging.set_verbosity(logging.WARNING)
  import flan_jax_tasks.default_mixture  # noqa: F401
  chat = [chat_examples.ChatTask("chat", FLAGS.chat, FLAGS.chat_template)] if FLAGS.chat else []
  job.register_tasks(FLAGS.data_dir, FLAGS.vocabulary, None, file_tasks=chat)
  if FLAGS.list:
    print("\n".join(registry.registered_names()))
    return
  name = FLAGS.task or FLAGS.mixture or ("chat" if FLAGS.chat else None)
  if not name:
    raise UserError("Give --list, --task=NAME, --mixture=NAME or --chat=FILE.")
  inspect(name, split=FLAGS.split, num_examples=FLAGS.num_examples,
          sample_size=FLAGS.sample_size, plot_path=FLAGS.plot,
          lengths={"inputs": FLAGS.inputs_length, "targets": FLAGS.targets_length})


if __name__ == "__main__":
  app.run(exit_on_user_error(main))

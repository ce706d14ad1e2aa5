r"""Grow instruction data from seed tasks with a teacher model: `python -m flan_jax.self_instruct`.

  python -m flan_jax.self_instruct \
      --seed_tasks=../shared/data/instruct/self_instruct/seed_tasks.jsonl \
      --checkpoint=../shared/data/models/stories260K-hf --output=/tmp/self_instruct \
      --num_instructions=20
  python -m flan_jax.self_instruct --seed_tasks=... --output=DIR --num_instructions=1000 \
      --endpoint=http://localhost:8000/v1 --model=meta-llama/Llama-3.1-70B-Instruct

The teacher is any checkpoint `infer` loads (--checkpoint, sampled as --strategy and
--temperature say) or an OpenAI-compatible server (--endpoint with --model: vLLM, a
hosted API; $OPENAI_API_KEY is sent when set). Writes DIR/self_instruct.jsonl (Alpaca
format), DIR/report.json (what every filter rejected), DIR/chat_task.gin and
DIR/task.gin (add one as --gin_file to train on the data as a chat task, or as a
FLAN-style task with the task library's Alpaca templates). Rerun the same command after an
interruption: answers kept in DIR/teacher_cache replay the run so far without asking
the teacher again. The library is `flan_jax.data.self_instruct`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from flan_jax import llm_judge  # noqa: E402
from flan_jax.data import self_instruct  # noqa: E402
from flan_jax.errors import UserError, exit_on_user_error  # noqa: E402
from flan_jax.evaluation.decoding import STRATEGIES, DecodeConfig  # noqa: E402

flags.DEFINE_string("seed_tasks", None, "Seed tasks JSONL ({instruction, instances, "
                    "is_classification}), e.g. instruct/self_instruct/seed_tasks.jsonl.")
flags.DEFINE_string("output", None, "Directory for the data, the report and the cache.")
flags.DEFINE_integer("num_instructions", 100, "Instructions to generate.")
flags.DEFINE_string("checkpoint", None, "A local teacher: a run's MODEL_DIR, an orbax or a "
                    "Hugging Face checkpoint.")
flags.DEFINE_string("endpoint", None, "An OpenAI-compatible server as the teacher.")
flags.DEFINE_string("model", None, "With --endpoint: the model it serves.")
flags.DEFINE_string("vocabulary", None, "With --checkpoint: its tokenizer, if it keeps none.")
flags.DEFINE_enum("strategy", "sample", list(STRATEGIES), "A local teacher's decoding.")
flags.DEFINE_float("temperature", 0.7, "Sampling temperature (the endpoint's too).")
flags.DEFINE_float("top_p", 1.0, "A local teacher's nucleus sampling.")
flags.DEFINE_integer("max_new_tokens", 256, "Tokens per teacher answer.")
flags.DEFINE_integer("max_input_length", 1024, "A local teacher's prompt tokens kept.")
flags.DEFINE_integer("batch_size", 8, "Prompts a local teacher decodes together.")
flags.DEFINE_integer("concurrency", 4, "Endpoint requests in flight at once.")
flags.DEFINE_integer("requests_per_step", 8, "Instruction requests per step.")
flags.DEFINE_float("rouge_threshold", 0.7, "Keep instructions whose ROUGE-L against the "
                   "pool is below this.")
flags.DEFINE_integer("min_words", 3, "Shortest instruction kept, in words.")
flags.DEFINE_integer("max_words", 150, "Longest instruction kept, in words.")
flags.DEFINE_enum("classify_with", "keywords", ["keywords", "teacher"],
                  "How classification tasks are recognised.")
flags.DEFINE_integer("max_instances", 3, "Instances kept per instruction.")
flags.DEFINE_integer("max_requests", None, "Stop after this many instruction requests "
                     "(default 20 per instruction).")
flags.DEFINE_integer("seed", 0, "Seed of the example draws and of sampling.")
flags.DEFINE_string("task_name", "self_instruct", "The task name chat_task.gin registers.")
flags.DEFINE_list("decontaminate_against", [], "Evaluation tasks or mixtures of the task "
                  "library in --data_dir (e.g. gsm8k,mmlu,bbh): instances sharing an n-gram "
                  "with their examples are dropped and counted.")
flags.DEFINE_string("data_dir", None, "The task library's data (../shared/data), for "
                    "--decontaminate_against.")
flags.DEFINE_enum("decontamination_rule", "13-gram", ["13-gram", "8-gram"], "Shared word "
                  "13-gram, or open-instruct's 8-grams covering over half an eval text.")
flags.DEFINE_string("decontamination_cache_dir", None, "Where the eval index is cached.")
FLAGS = flags.FLAGS


def make_teacher(output_dir: str):
  """The teacher the flags name, caching its answers under `output_dir`."""
  if (FLAGS.endpoint is None) == (FLAGS.checkpoint is None):
    raise UserError("Choose one teacher: --checkpoint=DIR (a local model) or --endpoint=URL "
                    "with --model=NAME (an OpenAI-compatible server).")
  if FLAGS.endpoint and not FLAGS.model:
    raise UserError("--endpoint needs --model=NAME, the model the server serves.")
  cache_dir = os.path.join(output_dir, self_instruct.CACHE_DIR)
  if FLAGS.endpoint:
    return llm_judge.make_judge(FLAGS.endpoint, FLAGS.model, cache_dir=cache_dir,
                                max_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                                concurrency=FLAGS.concurrency,
                                flag_names=("--endpoint", "--model"))
  decode = DecodeConfig(strategy=FLAGS.strategy, temperature=FLAGS.temperature,
                        top_p=FLAGS.top_p, seed=FLAGS.seed)
  return llm_judge.make_judge(checkpoint=FLAGS.checkpoint, cache_dir=cache_dir,
                              max_tokens=FLAGS.max_new_tokens, vocabulary_path=FLAGS.vocabulary,
                              max_input_length=FLAGS.max_input_length, decode=decode,
                              batch_size=FLAGS.batch_size)


def contamination_index():
  """The n-gram index of the evaluation tasks named by --decontaminate_against, or None.

  The same cached index (and rule) as `curate` and the run-level guard: their
  evaluation splits, built once per suite and read back on later runs."""
  if not FLAGS.decontaminate_against:
    return None
  if not FLAGS.data_dir:
    raise UserError("--decontaminate_against needs --data_dir (the task library's data, "
                    "e.g. ../shared/data).")
  from flan_jax import job
  from flan_jax.data import decontamination_index
  job.register_tasks(FLAGS.data_dir, None, None)
  index = decontamination_index.eval_index(FLAGS.decontaminate_against,
                                           FLAGS.decontamination_rule,
                                           cache_dir=FLAGS.decontamination_cache_dir)
  logging.info("Decontaminating against %s: %r.", FLAGS.decontaminate_against, index)
  return index


def main(argv):
  del argv
  if not FLAGS.seed_tasks or not FLAGS.output:
    raise UserError("--seed_tasks=FILE and --output=DIR are required.")
  seeds = self_instruct.read_seed_tasks(FLAGS.seed_tasks)
  config = self_instruct.SelfInstructConfig(
      num_instructions=FLAGS.num_instructions, requests_per_step=FLAGS.requests_per_step,
      rouge_threshold=FLAGS.rouge_threshold, min_words=FLAGS.min_words,
      max_words=FLAGS.max_words, classify_with=FLAGS.classify_with,
      max_instances=FLAGS.max_instances, max_requests=FLAGS.max_requests, seed=FLAGS.seed)
  os.makedirs(FLAGS.output, exist_ok=True)
  index = contamination_index()  # before the teacher loads: a typo fails fast
  teacher = make_teacher(FLAGS.output)
  report = self_instruct.generate(seeds, teacher, FLAGS.output, config, contamination=index)
  gin_path = self_instruct.write_chat_gin(FLAGS.output, FLAGS.task_name)
  task_gin_path = self_instruct.write_task_gin(FLAGS.output, FLAGS.task_name)
  logging.info("Teacher requests answered by the model: %d (the rest from the cache).",
               teacher.requests_made)
  print(f"{report.instructions_kept} instructions ({report.records_written} records) in "
        f"{os.path.join(FLAGS.output, self_instruct.OUTPUT_FILE)}; "
        f"{report.instructions_rejected()} rejected: "
        f"{ {k: v for k, v in report.rejected.items() if v} }. "
        f"Train on it with --gin_file={gin_path} (a chat task) or --gin_file={task_gin_path} "
        "(FLAN-style templates).")


if __name__ == "__main__":
  app.run(exit_on_user_error(main))

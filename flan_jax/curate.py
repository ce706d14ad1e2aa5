r"""Curate instruction data, LIMA-style: `python -m flan_jax.curate`.

  python -m flan_jax.curate \
      --input=../shared/data/instruct/alpaca/alpaca_en_demo_llamafactory.json \
      --input=../shared/data/instruct/lima/lima_llamafactory.json \
      --output=/tmp/curated.jsonl --target_size=1000 \
      --decontaminate_against=mmlu_0shot,bbh_direct,gsm8k --data_dir=../shared/data

Reads Alpaca-format JSON lists or JSONL (--input, repeatable), removes exact and near
duplicates (MinHash LSH, --near_duplicate_threshold), low-quality records, and with
--decontaminate_against records sharing text with those evaluation tasks (the task
library under --data_dir), then picks --target_size diverse records (k-center greedy
over TF-IDF vectors, or a checkpoint's hidden states with --checkpoint). Writes the
kept records as JSONL to --output, the stage counts to OUTPUT.report.json and the
kept-vs-dropped picture to OUTPUT.png. The work is `flan_jax.data.curation`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from flan_jax import paths  # noqa: E402
from flan_jax.data import curation, curation_plot, instruction_records, quality_filters  # noqa: E402
from flan_jax.errors import UserError, exit_on_user_error  # noqa: E402

flags.DEFINE_multi_string("input", [], "Alpaca-format records: a JSON list or JSONL (repeatable).")
flags.DEFINE_string("output", None, "Where the kept records go (JSONL).")
flags.DEFINE_integer("target_size", None, "Records to keep by diversity selection (default: "
                     "every record the filters keep).")
flags.DEFINE_float("near_duplicate_threshold", 0.8, "Word-shingle Jaccard similarity at which "
                   "two records are near duplicates.")
flags.DEFINE_integer("shingle_words", 3, "Words per shingle for near duplicates.")
flags.DEFINE_integer("num_perm", 128, "MinHash permutations.")
flags.DEFINE_integer("min_response_words", 1, "Shorter responses are dropped.")
flags.DEFINE_integer("max_response_words", 4000, "Longer responses are dropped.")
flags.DEFINE_string("checkpoint", None, "Embed with this flan_jax checkpoint's hidden states "
                    "(a run's MODEL_DIR, orbax or Hugging Face directory) instead of TF-IDF.")
flags.DEFINE_string("vocabulary", None, "The checkpoint's tokenizer, if it keeps none.")
flags.DEFINE_list("decontaminate_against", [], "Evaluation tasks or mixtures whose text no kept "
                  "record may share (needs --data_dir).")
flags.DEFINE_enum("decontamination_rule", "13-gram", ["13-gram", "8-gram"], "Shared word "
                  "13-gram, or open-instruct's 8-grams covering over half an eval text.")
flags.DEFINE_string("data_dir", None, "The task library's data (for --decontaminate_against).")
flags.DEFINE_string("decontamination_cache_dir", None, "Where the eval index is cached.")
flags.DEFINE_integer("num_clusters", 10, "k-means clusters in the picture.")
flags.DEFINE_integer("seed", 0, "Seed for MinHash, SVD and k-means.")
FLAGS = flags.FLAGS


def _contamination():
  if not FLAGS.decontaminate_against:
    return None
  if not FLAGS.data_dir:
    raise UserError("--decontaminate_against needs --data_dir: where the task library's "
                    "evaluation data is (e.g. ../shared/data).")
  from flan_jax.data import decontamination_index
  from flan_jax_tasks import library
  library.register(FLAGS.data_dir)
  index = decontamination_index.eval_index(FLAGS.decontaminate_against,
                                           FLAGS.decontamination_rule,
                                           cache_dir=FLAGS.decontamination_cache_dir)
  return index.hit


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments {argv[1:]}; pass files with --input=FILE.")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.input or not FLAGS.output:
    raise UserError("Give --input=FILE (repeatable) and --output=FILE.")
  if FLAGS.target_size is not None and FLAGS.target_size < 1:
    raise UserError(f"--target_size must be at least 1, got {FLAGS.target_size}.")
  if not 0 < FLAGS.near_duplicate_threshold <= 1:
    raise UserError("--near_duplicate_threshold must be in (0, 1], got "
                    f"{FLAGS.near_duplicate_threshold}.")
  records = instruction_records.read_all(FLAGS.input)
  contamination = _contamination()
  embed, name = None, "tfidf"
  if FLAGS.checkpoint:
    from flan_jax.checkpoint_embeddings import checkpoint_embeddings
    embed = lambda texts: checkpoint_embeddings(FLAGS.checkpoint, texts,
                                                vocabulary_path=FLAGS.vocabulary)
    name = f"checkpoint {FLAGS.checkpoint}"
  settings = curation.CurationSettings(
      target_size=FLAGS.target_size, near_duplicate_threshold=FLAGS.near_duplicate_threshold,
      shingle_words=FLAGS.shingle_words, num_perm=FLAGS.num_perm,
      quality=quality_filters.QualitySettings(min_words=FLAGS.min_response_words,
                                              max_words=FLAGS.max_response_words),
      num_clusters=FLAGS.num_clusters, seed=FLAGS.seed)
  result = curation.curate(records, settings, embed=embed, embedding_name=name,
                           contamination=contamination)
  instruction_records.write_jsonl([records[i] for i in result.kept], FLAGS.output)
  report = {**result.report(), "inputs": list(FLAGS.input), "output": FLAGS.output,
            "decontaminate_against": FLAGS.decontaminate_against,
            "decontamination_rule": FLAGS.decontamination_rule if contamination else None}
  paths.write_json(f"{FLAGS.output}.report.json", report, indent=1)
  curation_plot.plot(result, f"{FLAGS.output}.png")
  print(result.summary())
  print(f"Wrote {FLAGS.output}, {FLAGS.output}.report.json and {FLAGS.output}.png.",
        file=sys.stderr)


if __name__ == "__main__":
  app.run(exit_on_user_error(main))

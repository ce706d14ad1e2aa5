"""Decontamination: n-gram overlap between training tasks and eval tasks, reported and filtered."""

import json
import logging

import pytest
import seqio
import tensorflow as tf

from flan_jax.data import decontamination as dc
from flan_jax.data.templates import Template, apply_templates
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.errors import UserError

FOX = "The quick brown fox jumps over the lazy dog near the quiet river bank today."
PLANTS = ("Photosynthesis converts light energy into chemical energy stored in glucose "
          "molecules inside plant cells.")
EVEN = "Is forty five an even number, answer yes or no"  # 10 words: short, but indexed whole
SUM = "What is seven plus two?"  # 5 words: too short to index
EVEREST = ("Mount Everest is the highest mountain above sea level, located in the Himalayas "
           "between Nepal and China.")

EVAL = {"inputs": [FOX, PLANTS, EVEN, SUM], "targets": ["yes", "true", "no", "nine"]}
EVAL_B = {"inputs": [EVEREST], "targets": ["yes"]}
# (inputs, targets, overlaps?) -- each record's story is in its comment.
TRAIN_A = [
    (FOX, "yes", True),  # an exact copy of an eval example
    ("Look: THE QUICK brown fox jumps over the lazy dog -- near the quiet river!!! It slept.",
     "ok", True),  # a paraphrase that keeps one 13-gram (case and punctuation differ)
    (PLANTS.replace("plant", "animal"), "false", False),  # shares 12 words in a row, not 13
    ("Question: Is forty-five an even number? Answer yes or no.", "no", True),  # short text inside
    ("Quick quiz: what is seven plus two", "nine", False),  # under min_words, never indexed
    ("Where is Everest?", EVEREST, True),  # the copy sits in the targets; hits the other eval task
]
FACTS = ["Bananas are berries but strawberries are not, according to botanists.", PLANTS]
EVAL_TASKS = ["decon_test_eval", "decon_test_eval_b"]


def _source(columns: dict[str, list[str]], split: str) -> seqio.FunctionDataSource:
  size = len(next(iter(columns.values())))
  return seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(columns),
      splits=[split], num_input_examples={split: size})


@pytest.fixture(scope="module")
def tasks():
  tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  features = output_features(byte_vocabulary())
  train_a = {"inputs": [i for i, _, _ in TRAIN_A], "targets": [t for _, t, _ in TRAIN_A]}
  seqio.TaskRegistry.add("decon_test_eval", _source(EVAL, "validation"), features, tokenize)
  seqio.TaskRegistry.add("decon_test_eval_b", _source(EVAL_B, "validation"), features, tokenize)
  seqio.TaskRegistry.add("decon_test_train_a", _source(train_a, "train"), features, tokenize)
  # Rendered by a template, so the filter must sit after apply_templates to see the text.
  seqio.TaskRegistry.add(
      "decon_test_train_b",
      _source({"fact": FACTS, "answer": ["a", "b"]}, "train"), features,
      [apply_templates([Template("Tell me something: {fact}", "{answer}")]), *tokenize])
  names = ["decon_test_eval", "decon_test_eval_b", "decon_test_train_a", "decon_test_train_b"]
  yield names
  for name in names:
    seqio.TaskRegistry.remove(name)


def test_normalisation_lowercases_and_treats_punctuation_as_space():
  assert dc.normalize("Don't STOP: 3+4=7, a_b!") == ["don", "t", "stop", "3", "4", "7", "a", "b"]


def test_short_texts_count_whole_only_with_min_words():
  words = dc.normalize(EVEN)
  assert dc.ngrams(words, n=13, min_words=8) == [tuple(words)]
  assert dc.ngrams(dc.normalize(SUM), n=13, min_words=8) == []
  assert len(dc.ngrams(dc.normalize(FOX), n=13)) == 15 - 13 + 1


def test_hashing_is_deterministic_across_calls_and_processes():
  first = dc.build_ngram_index([FOX, PLANTS, EVEN], n=13)
  again = dc.build_ngram_index([FOX, PLANTS, EVEN], n=13)
  assert set(first) == set(again) and len(first) == 3 + 2 + 1
  # A fixed value: Python's salted hash() of a str could never match it in a new process.
  assert dc.ngram_hash(("the", "quick", "brown")) == 6562066437553726958


def test_eval_index_knows_which_eval_task_each_ngram_came_from(tasks):
  index = dc.eval_ngram_index(EVAL_TASKS, split="validation")
  assert index.sources == EVAL_TASKS
  assert index.lengths == {13, 10}  # full 13-grams, plus the 10-word short text
  assert len(index) == 3 + 2 + 1 + 5  # FOX, PLANTS, EVEN; EVEREST; answers are too short
  [match] = index.matches("trivia: " + EVEREST, first_only=True)
  assert match.sources == ("decon_test_eval_b",)
  assert not index.matches(PLANTS.replace("plant", "animal"))


def test_report_counts_each_training_task_exactly(tasks):
  report = dc.contamination_report(["decon_test_train_a", "decon_test_train_b"], EVAL_TASKS)
  by_task = {t.task: t for t in report.tasks}
  a, b = by_task["decon_test_train_a"], by_task["decon_test_train_b"]
  assert (a.checked, a.overlapping) == (6, sum(hit for _, _, hit in TRAIN_A))
  assert a.eval_tasks_hit == {"decon_test_eval": 3, "decon_test_eval_b": 1}
  assert (b.checked, b.overlapping) == (2, 1)
  assert report.eval_task_hits == {"decon_test_eval": 4, "decon_test_eval_b": 1}
  assert (report.checked, report.overlapping) == (8, 5)
  # Samples show the text and the shared n-gram, so a false alarm is easy to see.
  paraphrase = a.examples[1]
  assert paraphrase.inputs.startswith("Look: THE QUICK")
  assert paraphrase.ngram == "the quick brown fox jumps over the lazy dog near the quiet river"
  assert paraphrase.eval_tasks == ["decon_test_eval"]
  assert json.loads(report.to_json())["tasks"][0]["overlapping"] == 4
  table = report.format_table()
  assert "decon_test_train_a" in table and "66.67%" in table and "total" in table


def test_filter_drops_exactly_the_overlapping_examples_and_says_so(tasks, caplog):
  index = dc.eval_ngram_index(EVAL_TASKS)
  drop = dc.make_filter(index, n=13, name="story filter")
  records = tf.data.Dataset.from_tensor_slices(
      {"inputs": [i for i, _, _ in TRAIN_A], "targets": [t for _, t, _ in TRAIN_A]})
  with caplog.at_level(logging.WARNING, logger=dc.__name__):
    kept = [ex["inputs"].decode() for ex in drop(records).as_numpy_iterator()]
  assert kept == [i for i, _, hit in TRAIN_A if not hit]
  assert (drop.counts.checked, drop.counts.dropped) == (6, 4)
  assert drop.counts.eval_task_hits == {"decon_test_eval": 3, "decon_test_eval_b": 1}
  messages = [r.getMessage() for r in caplog.records]
  assert any("story filter: dropped an example sharing" in m for m in messages)
  assert any("end of a pass, dropped 4 of 6 examples checked" in m for m in messages)


def test_filter_refuses_tokenized_fields(tasks):
  index = dc.build_ngram_index([FOX])
  tokens = tf.data.Dataset.from_tensor_slices({"inputs": [[1, 2]], "targets": [[3, 4]]})
  with pytest.raises(UserError, match="before seqio.preprocessors.tokenize"):
    dc.make_filter(index)(tokens)


def test_decontaminated_task_is_a_registered_copy_without_the_overlaps(tasks):
  index = dc.eval_ngram_index(EVAL_TASKS)
  try:
    clean_a = dc.decontaminated_task("decon_test_train_a", new_name="decon_test_a_clean", index=index)
    clean_b = dc.decontaminated_task("decon_test_train_b", EVAL_TASKS, "decon_test_b_clean")
    assert seqio.get_mixture_or_task("decon_test_a_clean") is clean_a
    # Right after the template is rendered, right before tokenization.
    assert isinstance(clean_b.preprocessors[1], dc.NgramFilter)
    assert clean_b.preprocessors[2] is seqio.preprocessors.tokenize
    original = seqio.get_mixture_or_task("decon_test_train_a")
    assert clean_a.source is original.source and clean_a.output_features == original.output_features

    def inputs(task):
      dataset = task.get_dataset(None, split="train", shuffle=False, seed=0)
      return [ex["inputs_pretokenized"].decode() for ex in dataset.as_numpy_iterator()]

    assert inputs(clean_a) == [i for i, _, hit in TRAIN_A if not hit]
    assert inputs(clean_b) == ["Tell me something: " + FACTS[0]]
    assert str(dc.get_filter("decon_test_a_clean").counts) == "dropped 4 of 6 examples checked"
    assert dc.get_filter(clean_b).counts.dropped == 1
  finally:
    for name in ("decon_test_a_clean", "decon_test_b_clean"):
      seqio.TaskRegistry.remove(name)


def test_the_default_mixture_can_be_checked_against_its_heldout_cluster():
  import flan_jax_tasks.default_mixture  # noqa: F401  (registers the tasks)
  train = [t.name for t in seqio.get_mixture_or_task("default_train").tasks]
  heldout = [t.name for t in seqio.get_mixture_or_task("default_heldout").tasks]
  report = dc.contamination_report("default_train", "default_heldout", n=5,
                                   max_examples_per_task=50, max_eval_examples=50)
  assert [t.task for t in report.tasks] == train and report.eval_tasks == heldout
  assert all(t.checked == 50 for t in report.tasks) and report.index_size > 0
  assert set(report.eval_task_hits) <= set(heldout)
  assert "total" in report.format_table()  # it renders, whatever it found

"""The run-level guard: a planted MMLU test question is removed before training and counted.

The eval side is real: MMLU's abstract algebra test set (../shared/data), rendered by
the task library exactly as evaluation renders it. The training side is two small
FLAN-style tasks: one with a test question copied in (as a scraped quiz would), one
clean. The guard must remove exactly the copy, count it against the MMLU task, leave
the clean task untouched, and the run's stream must never show the copy.
"""

import json
import os

import pytest
import seqio

from flan_jax.data import decontamination_index as di
from flan_jax.data import run_decontamination as rd
from flan_jax.data import task_reader
from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.templates import Template

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                    "data")
EVAL_TASK = "mmlu_abstract_algebra_zs_noopt"
# Row 8 of abstract_algebra_test.csv, as a quiz site would have copied it.
PLANTED = ("Statement 1 | Every homomorphic image of a group G is isomorphic to a factor group "
           "of G. Statement 2 | The homomorphic images of a group G are the same (up to "
           "isomorphism) as the factor groups of G.")
CLEAN = [
    "A group is a set with an associative operation, an identity and inverses.",
    "Name the capital of France and describe one of its famous museums in a sentence.",
    "Summarize why the sky looks blue during the day but red at sunset near the horizon.",
    "Write a haiku about autumn leaves falling gently onto a quiet mountain stream.",
]
TEMPLATES = (Template("Answer the question.\n\n{question}", "{answer}"),)


def _records(questions):
  return lambda split: [{"question": q, "answer": f"answer {i}"} for i, q in enumerate(questions)]


@pytest.fixture(scope="module")
def run_tasks():
  if not os.path.isdir(os.path.join(DATA, "eval", "mmlu")):
    pytest.skip("needs ../shared/data/eval/mmlu")
  from flan_jax_tasks.library import mmlu
  mmlu.register(DATA)
  planted = CLEAN[:2] + [PLANTED] + CLEAN[2:]
  for name, questions in (("guard_planted", planted), ("guard_clean", CLEAN)):
    register_flan_task(FlanTaskSpec(name=name, cluster="guard_test", records=_records(questions),
                                    templates=TEMPLATES, splits=("train",), few_shot=False))
  seqio.MixtureRegistry.add("guard_mix", [("guard_planted_zs_noopt", 3.0),
                                          ("guard_clean_zs_noopt", 1.0)])
  yield
  seqio.MixtureRegistry.remove("guard_mix")
  for name in ("guard_planted", "guard_clean"):
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(f"{name}_zs_noopt")


def _questions(task_name: str) -> list[str]:
  task = seqio.get_mixture_or_task(task_name)
  texts = [e["inputs_pretokenized"] for e in task_reader.task_examples(
      task, "train", sequence_length=None, seed=0, shuffle=False)]
  return [t.removeprefix("Answer the question.\n\n") for t in texts]


@pytest.mark.parametrize("rule", ["13-gram", "8-gram"])
def test_planted_mmlu_question_is_removed_and_counted_and_clean_task_keeps_all(
    run_tasks, tmp_path, rule):
  summary = rd.guard("guard_mix", [EVAL_TASK], rule=rule, cache_dir=str(tmp_path))
  by_task = {t.task: t for t in summary.tasks}
  planted, clean = by_task["guard_planted_zs_noopt"], by_task["guard_clean_zs_noopt"]
  assert (planted.checked, planted.removed) == (5, 1)
  assert planted.eval_tasks_hit == {EVAL_TASK: 1}
  assert planted.samples[0]["record"] == 2 and "homomorphic image" in planted.samples[0]["text"]
  assert (clean.checked, clean.removed, clean.eval_tasks_hit) == (4, 0, {})
  assert (summary.checked, summary.removed) == (9, 1)
  # The run trains on a copy of the planted task only; the clean one is used as it is.
  mixture = seqio.get_mixture_or_task(summary.mixture)
  assert summary.mixture == "guard_mix_decontaminated"
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
      "guard_planted_zs_noopt_decontaminated": 3.0, "guard_clean_zs_noopt": 1.0}
  assert _questions("guard_planted_zs_noopt_decontaminated") == CLEAN  # the rest, unchanged
  assert _questions("guard_clean_zs_noopt") == CLEAN
  # The endless training stream never draws the copy, across epochs.
  stream = task_reader.mixture_examples(mixture, "train", sequence_length={"inputs": 512,
                                        "targets": 32}, seed=0)
  drawn = [next(stream)["inputs_pretokenized"] for _ in range(60)]
  assert not any("homomorphic" in text for text in drawn)
  assert json.loads(json.dumps(summary.to_dict()))["removed"] == 1


def test_index_is_built_once_then_read_from_the_cache(run_tasks, tmp_path):
  built = di.eval_index([EVAL_TASK], cache_dir=str(tmp_path))
  [npz] = [f for f in os.listdir(tmp_path) if f.endswith(".npz")]
  meta = json.loads((tmp_path / npz.replace(".npz", ".json")).read_text())
  assert meta["eval_tasks"] == {EVAL_TASK: {"test": 100}} and meta["rule"] == "13-gram"
  again = di.eval_index([EVAL_TASK], cache_dir=str(tmp_path))
  assert (again.keys == built.keys).all() and again.sources == built.sources
  assert len(os.listdir(tmp_path)) == 2  # read, not rebuilt beside it
  # Another rule is another index.
  di.eval_index([EVAL_TASK], "8-gram", cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 4


def test_the_8_gram_rule_needs_half_the_eval_text_covered():
  index = di.DecontaminationIndex.build(
      [("eval", "one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen")], di.RULES["8-gram"])
  # 9 shared words: two 8-grams covering 9 of 16 words (56%) -> contaminated.
  hit = index.hit("intro one two three four five six seven eight nine outro")
  assert hit and hit.coverage == pytest.approx(9 / 16)
  # One 8-gram covers exactly half: not more than half -> clean. Under 13-gram: clean too.
  assert index.hit("intro one two three four five six seven eight outro") is None
  assert di.DecontaminationIndex.build(
      [("eval", "one two three four five six seven eight nine ten eleven twelve thirteen")],
      di.RULES["13-gram"]).hit("one two three four five six seven eight nine ten eleven "
                               "twelve") is None


def test_the_lines_every_eval_prompt_repeats_are_not_an_example_s_text():
  """Few-shot exemplars are shared by every prompt: a copied question must be judged
  against the question, or 8-gram coverage of an 8-shot prompt never passes half."""
  shots = "Q: What is two plus two?\nA: 4.\n\nQ: What is three plus one?\nA: 4.\n\n"
  prompts = [shots + "Q: How many legs do seven spiders and two ants have in all?\nA:",
             shots + "Q: How many minutes are there in three and a half hours?\nA:"]
  assert di.shared_prefix(prompts) == shots
  assert di.shared_prefix(["Q: How many legs\nA:", "Q: How many minutes\nA:"]) == ""
  assert di.shared_prefix(prompts[:1]) == ""  # one prompt owns all its lines


def test_train_entry_point_records_what_it_decontaminated_against(tmp_path):
  """Wiring through gin: the log, MODEL_DIR/decontamination.json and eval/heldout.json."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  model_dir = tmp_path / "run"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/quickstart.gin",
       f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=1",
       "--gin.MIXTURE_OR_TASK_NAME='default_uppercase_word_zs_noopt'",
       "--gin.train.decontaminate_against=['default_heldout']",
       f"--gin.train.decontamination_cache_dir='{tmp_path / 'cache'}'",
       "--gin_bindings=EvalConfig.max_examples_per_task = 2", "--gin.EvalConfig.batch_size=2",
       "--gin.EvalConfig.evaluate_seen=False", "--gin.train.evaluate_before=False",
       "--gin.DecoderConfig.num_layers=1", "--gin.DecoderConfig.embed_dim=32",
       "--gin.train.truncation_sample=0"],
      cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  recorded = json.loads((model_dir / "decontamination.json").read_text())
  assert recorded["against"] == ["default_heldout"] and recorded["rule"] == "13-gram"
  assert [(t["task"], t["checked"], t["removed"]) for t in recorded["tasks"]] == [
      ("default_uppercase_word_zs_noopt", 5000, 0)]
  assert len(recorded["eval_tasks"]) > 1  # the held-out mixture's leaf tasks
  heldout = json.loads((model_dir / "eval" / "heldout.json").read_text())
  assert heldout["decontamination"] == {"against": ["default_heldout"], "rule": "13-gram",
                                        "checked": 5000, "removed": 0}
  assert "removed 0 of 5000 training examples" in result.stderr
  assert "Training data decontaminated against default_heldout" in result.stdout


def test_a_conversation_quoting_the_question_is_skipped_too(run_tasks, tmp_path):
  """Conversation files are read record by record like FLAN tasks: the same guard applies."""
  from flan_jax.data import chat_examples
  from flan_jax.data.vocabularies import byte_vocabulary
  chats = tmp_path / "chats.jsonl"
  lines = [[{"role": "user", "content": "Hi, how are you today?"},
            {"role": "assistant", "content": "Fine, thanks."}],
           [{"role": "user", "content": PLANTED + " Which is it?"},
            {"role": "assistant", "content": "True, True."}]]
  chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in lines))
  chat_examples.ChatTask("guard_chat", str(chats), "chatml").register(byte_vocabulary())
  try:
    summary = rd.guard("guard_chat", [EVAL_TASK], cache_dir=str(tmp_path / "cache"))
    assert [(t.checked, t.removed) for t in summary.tasks] == [(2, 1)]
    copy = seqio.get_mixture_or_task(summary.mixture)
    assert summary.mixture == "guard_chat_decontaminated"
    texts = [e["targets_pretokenized"] for e in task_reader.task_examples(
        copy, "train", sequence_length=None, seed=0, shuffle=False)]
    assert len(texts) == 1 and "how are you" in texts[0]
  finally:
    for name in ("guard_chat", "guard_chat_decontaminated"):
      if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)


def _seqio_task(name: str, questions: list[str]) -> seqio.Task:
  """A task seqio reads itself (a function source, a map preprocessor, seqio's tokenizer):
  the guard cannot skip its records by index and must filter the stream instead."""
  import tensorflow as tf
  from flan_jax.data.vocabularies import byte_vocabulary

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
        {"question": questions, "answer": [f"answer {i}" for i in range(len(questions))]})

  def render(dataset):
    return dataset.map(lambda ex: {"inputs": tf.strings.join(["Q: ", ex["question"]]),
                                   "targets": ex["answer"]})

  features = {k: seqio.Feature(byte_vocabulary()) for k in ("inputs", "targets")}
  return seqio.TaskRegistry.add(
      name, seqio.FunctionDataSource(dataset_fn, splits=("train",)),
      preprocessors=[render, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=features)


def test_a_task_read_through_seqio_gets_the_filter_as_a_preprocessor(run_tasks, tmp_path):
  """Not a FLAN or conversation task: the copy filters the stream, with the same counts."""
  from flan_jax.data import decontamination as dc
  planted = CLEAN[:2] + [PLANTED] + CLEAN[2:]
  names = ["guard_seqio_planted", "guard_seqio_clean"]
  _seqio_task(names[0], planted)
  _seqio_task(names[1], CLEAN)
  seqio.MixtureRegistry.add("guard_seqio_mix", [(names[0], 2.0), (names[1], 1.0)])
  assert not any(task_reader.python_readable(seqio.get_mixture_or_task(n)) for n in names)
  try:
    summary = rd.guard("guard_seqio_mix", [EVAL_TASK], cache_dir=str(tmp_path))
    by_task = {t.task: t for t in summary.tasks}
    assert (by_task[names[0]].checked, by_task[names[0]].removed) == (5, 1)
    assert by_task[names[0]].eval_tasks_hit == {EVAL_TASK: 1}
    assert PLANTED[:40] in by_task[names[0]].samples[0]["text"]
    assert (by_task[names[1]].checked, by_task[names[1]].removed) == (4, 0)
    assert summary.mixture == "guard_seqio_mix_decontaminated"
    mixture = seqio.get_mixture_or_task(summary.mixture)
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
        names[0] + rd.SUFFIX: 2.0, names[1]: 1.0}  # the clean task is used as it is

    copy = seqio.get_mixture_or_task(names[0] + rd.SUFFIX)
    filters = [p for p in copy.preprocessors if isinstance(p, dc.NgramFilter)]
    assert len(filters) == 1
    # Before the tokenizer, where inputs are still text.
    assert copy.preprocessors.index(filters[0]) == 1
    texts = [e["inputs_pretokenized"].decode() for e in task_reader.task_examples(
        copy, "train", sequence_length=None, seed=0, shuffle=False)]
    assert texts == ["Q: " + q for q in CLEAN]  # the rest, in order
    assert (filters[0].counts.checked, filters[0].counts.dropped) == (5, 1)
    clean_texts = [e["inputs_pretokenized"].decode() for e in task_reader.task_examples(
        seqio.get_mixture_or_task(names[1]), "train", sequence_length=None, seed=0,
        shuffle=False)]
    assert clean_texts == ["Q: " + q for q in CLEAN]
  finally:
    for name in ("guard_seqio_mix", "guard_seqio_mix_decontaminated"):
      if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    for name in names + [names[0] + rd.SUFFIX]:
      if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)

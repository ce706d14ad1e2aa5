"""A directory of Natural Instructions files becomes FLAN-style tasks, lazily and safely."""

import json
import os
import re

import pytest
import seqio

from flan_jax.data import clusters
from flan_jax.data.flan_task import strip_postprocessor
from flan_jax.data.natural_instructions import default_cluster, register_ni_directory, split_indices
from flan_jax.errors import UserError
from flan_jax.metrics import accuracy
from flan_jax_tasks.library import natural_instructions as ni_library

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "tasks", "natural_instructions")

# The first positive example is copied from the instances, as NI authors often do.
QA_POSITIVES = [{"input": "Question 5?", "output": "answer 5", "explanation": "Copied."}] + [
    {"input": f"Shown question {c}?", "output": f"shown answer {c}", "explanation": "Because."}
    for c in "AB"]


def _ni_file(path, definition, categories, positives, instances) -> None:
  """NI's key order: the header, then Instances last."""
  document = {"Contributors": ["Test"], "Source": ["synthetic"], "Categories": categories,
              "Definition": definition, "Positive Examples": positives,
              "Negative Examples": [], "Input_language": ["English"], "Instances": instances}
  with open(path, "w") as f:
    json.dump(document, f, indent=2)


def _write_library(directory) -> None:
  os.makedirs(directory, exist_ok=True)
  _ni_file(os.path.join(directory, "task001_quiz.json"), ["Answer the quiz question."],
           ["Question Answering"], QA_POSITIVES,
           [{"id": f"task001-{i}", "input": f"Question {i}?",
             "output": [f"answer {i}", f"alias {i}"]} for i in range(30)])
  _ni_file(os.path.join(directory, "task002_toxic-or-not.json"), "Is the comment toxic?",
           ["Toxic Language Detection"], [{"input": "You are lovely.", "output": "no"}],
           [{"input": f"Comment {i}.", "output": ["yes" if i % 3 else "no"]} for i in range(20)])
  _ni_file(os.path.join(directory, "task003_odd.json"), ["Do the odd thing."],
           ["Made-Up Category"], [], [{"input": f"Thing {i}", "output": [f"odd {i}"]} for i in range(8)])


def _remove(prefix: str) -> None:
  for name in [n for n in seqio.MixtureRegistry.names() if n.startswith(prefix)]:
    seqio.MixtureRegistry.remove(name)
  for name in [n for n in seqio.TaskRegistry.names() if n.startswith(prefix)]:
    seqio.TaskRegistry.remove(name)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
  directory = tmp_path_factory.mktemp("ni")
  _write_library(directory)
  yield directory, register_ni_directory(str(directory), prefix="test_ni_", few_shot_token_budget=4096)
  _remove("test_ni_")


def _examples(task_name, split):
  task = seqio.get_mixture_or_task(task_name)
  return list(task.get_dataset(None, split=split, shuffle=False, seed=0).as_numpy_iterator())


def _inputs(task_name, split) -> list[str]:
  return [e["inputs_pretokenized"].decode() for e in _examples(task_name, split)]


def test_every_file_becomes_a_mixture_of_its_variants(library):
  _, names = library
  assert names == ["test_ni_task001_quiz", "test_ni_task002_toxic_or_not", "test_ni_task003_odd"]
  tasks = {n: {t.name for t in seqio.get_mixture_or_task(n).tasks} for n in names}
  assert tasks["test_ni_task001_quiz"] == {"test_ni_task001_quiz_zs_noopt", "test_ni_task001_quiz_fs_noopt"}
  # Without positive examples there is no NI few-shot prompt to make.
  assert tasks["test_ni_task003_odd"] == {"test_ni_task003_odd_zs_noopt"}


def test_the_definition_leads_every_prompt(library):
  for text in _inputs("test_ni_task001_quiz_zs_noopt", "validation"):
    assert "Answer the quiz question." in text and re.search(r"Question \d+\?", text)
  for text in _inputs("test_ni_task002_toxic_or_not_fs_noopt", "validation"):
    assert text.count("Is the comment toxic?") == 1  # once, not once per exemplar


def test_few_shot_exemplars_are_the_tasks_positive_examples(library):
  prompts = [*_inputs("test_ni_task001_quiz_fs_noopt", "train"),
             *_inputs("test_ni_task001_quiz_fs_noopt", "validation")]
  assert len(prompts) == 30
  for text in prompts:
    questions = re.findall(r"Question \d+\?", text)
    if questions[-1] == "Question 5?":  # the copied positive never shows its own answer
      assert questions == ["Question 5?"] and "answer 5" not in text
      assert "Shown question A?" in text and "shown answer B" in text
    else:  # k=2: the first two positives, and no train instance drawn instead
      assert questions[0] == "Question 5?" and len(questions) == 2
      assert "shown answer A" in text and "Shown question B?" not in text


def test_training_targets_one_reference_and_evaluation_accepts_any(library):
  example = _examples("test_ni_task001_quiz_zs_noopt", "validation")[0]
  number = re.search(r"Question (\d+)\?", example["inputs_pretokenized"].decode()).group(1)
  assert example["targets_pretokenized"].decode() == f"answer {number}"
  target = strip_postprocessor(example["targets_pretokenized"].decode(), example=example, is_target=True)
  assert target == [f"answer {number}", f"alias {number}"]
  for prediction, score in ((f" alias {number}", 100.0), (f"answer {number}", 100.0), ("wrong", 0.0)):
    assert accuracy([target], [strip_postprocessor(prediction)])["accuracy"] == score


def test_categories_become_clusters(library):
  _, names = library
  assert [clusters.cluster_of(n) for n in names] == ["qa", "toxicity", "ni_made_up_category"]
  assert clusters.cluster_of("test_ni_task001_quiz_fs_noopt") == "qa"
  assert default_cluster(["Unheard Of", "Sentiment Analysis"]) == "sentiment"
  assert default_cluster([]) == "ni_uncategorized"


def test_the_split_is_deterministic_disjoint_and_complete(library, tmp_path):
  numbers = lambda split: {int(n) for t in _inputs("test_ni_task001_quiz_zs_noopt", split)
                           for n in re.findall(r"Question (\d+)\?", t)}
  train, validation = numbers("train"), numbers("validation")
  assert len(validation) == 3 and not train & validation and train | validation == set(range(30))
  # The same files under another name split the same way.
  _write_library(tmp_path)
  register_ni_directory(str(tmp_path), prefix="test_ni_again_")
  try:
    again = {int(n) for t in _inputs("test_ni_again_task001_quiz_zs_noopt", "validation")
             for n in re.findall(r"Question (\d+)\?", t)}
    assert again == validation
  finally:
    _remove("test_ni_again_")


def test_split_rule_caps_validation_and_keeps_equal_keys_together():
  train, validation = split_indices([f"id{i}" for i in range(5000)], 0.1, 100)
  assert len(validation) == 100 and len(train) == 4900
  train, validation = split_indices(["same"] * 3 + ["other"], 0.5, 100)
  assert {0, 1, 2} <= set(train) or {0, 1, 2} <= set(validation)
  assert split_indices(["only"], 0.1, 100) == ([0], [])


def test_registration_reads_headers_only(tmp_path):
  good = json.dumps({"Definition": ["Copy the input."], "Categories": ["Program Execution"],
                     "Positive Examples": [{"input": "a", "output": "a"}]}, indent=1)
  with open(tmp_path / "task900_broken_instances.json", "w") as f:
    f.write(good[:-2] + ',\n "Instances": [{"input": "x", "output": ["x"]}, {{{ not json')
  try:
    names = register_ni_directory(str(tmp_path), prefix="test_ni_lazy_")
    assert names == ["test_ni_lazy_task900_broken_instances"]
    assert clusters.cluster_of(names[0]) == "program_execution"
    task = seqio.get_mixture_or_task(f"{names[0]}_zs_noopt")
    with pytest.raises(UserError, match=r"task900_broken_instances\.json, line \d+ column \d+: not valid JSON"):
      task.get_dataset(None, split="train")
  finally:
    _remove("test_ni_lazy_")


def test_a_file_with_instances_first_is_read_whole(tmp_path):
  # Not NI's key order, so the header trick sees no Definition and parses the file.
  (tmp_path / "task960_reordered.json").write_text(json.dumps(
      {"Instances": [{"input": f"in {i}", "output": [f"out {i}"]} for i in range(4)],
       "Definition": "Echo it.", "Categories": ["Misc."]}))
  try:
    register_ni_directory(str(tmp_path), prefix="test_ni_order_")
    assert all("Echo it." in t
               for t in _inputs("test_ni_order_task960_reordered_zs_noopt", "train"))
  finally:
    _remove("test_ni_order_")


def test_a_malformed_header_names_the_file_or_is_skipped(tmp_path):
  _write_library(tmp_path)
  (tmp_path / "task950_no_definition.json").write_text(
      json.dumps({"Categories": ["Misc."], "Instances": [{"input": "x", "output": ["y"]}]}))
  with pytest.raises(UserError, match=r"task950_no_definition\.json: no \"Definition\""):
    register_ni_directory(str(tmp_path), prefix="test_ni_bad_")
  assert not any(n.startswith("test_ni_bad_") for n in seqio.TaskRegistry.names())  # all or nothing
  (tmp_path / "task951_truncated.json").write_text('{"Definition": "Cut off')
  try:
    names = register_ni_directory(str(tmp_path), prefix="test_ni_bad_", on_error="skip")
    assert len(names) == 3 and not any("task95" in n for n in names)
  finally:
    _remove("test_ni_bad_")


def test_max_instances_per_task_caps_the_train_split(tmp_path):
  _write_library(tmp_path)
  try:
    register_ni_directory(str(tmp_path), prefix="test_ni_cap_", max_instances_per_task=5)
    task = seqio.get_mixture_or_task("test_ni_cap_task001_quiz_zs_noopt")
    assert task.num_input_examples("train") == 5 and task.num_input_examples("validation") == 3
  finally:
    _remove("test_ni_cap_")


@pytest.mark.skipif(not os.path.isdir(NI_DIR), reason="../shared/data is not present")
def test_the_real_natural_instructions_files_register_and_render():
  try:
    names = register_ni_directory(NI_DIR, prefix="test_ni_real_")
    assert len(names) == 24
    assert clusters.cluster_of("test_ni_real_task305_jeopardy_answer_generation_normal") == "qa"
    task = seqio.get_mixture_or_task("test_ni_real_task321_stereoset_classification_religion_fs_noopt")
    example = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert "stereotype" in example["inputs_pretokenized"].decode()
    assert example["targets_pretokenized"].decode() in {"stereotype", "anti-stereotype", "unrelated"}
  finally:
    _remove("test_ni_real_")


def test_the_library_registers_data_dir_tasks_and_skips_a_missing_directory(tmp_path):
  assert ni_library.register(str(tmp_path)) == []
  _write_library(tmp_path / "tasks" / "natural_instructions")
  try:
    assert ni_library.register(str(tmp_path)) == [
        "ni_task001_quiz", "ni_task002_toxic_or_not", "ni_task003_odd"]
  finally:
    _remove("ni_task00")

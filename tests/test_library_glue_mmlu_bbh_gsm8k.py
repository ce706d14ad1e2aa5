"""The GLUE-style, MMLU, BBH and GSM8K registrations, on the real files in ../shared/data."""

import csv
import functools
import json
import os
import re
import time

import pytest
import seqio

from flan_jax.data import clusters
from flan_jax.data.flan_task import cot_postprocessor
from flan_jax.data.variants import extract_answer, format_options
from flan_jax.errors import UserError
from flan_jax_tasks.library import bbh, common, glue, gsm8k, mmlu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
GLUE_DIR = os.path.join(DATA, "eval", "glue_superglue")
GLUE_DATASETS = ("rte", "cb", "anli_r1", "anli_r2", "anli_r3", "copa", "boolq", "sst2", "trec",
                 "ag_news")
MODULES = (glue, mmlu, bbh, gsm8k)

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"no real data at {DATA}")


@pytest.fixture(scope="module")
def library():
  start = time.perf_counter()
  mixtures = {module.__name__.rsplit(".", 1)[1]: module.register(DATA) for module in MODULES}
  return mixtures, time.perf_counter() - start


def _source(task_name):
  return seqio.get_mixture_or_task(task_name).source


def _render(task_name, split, index=0, seed=0):
  return _source(task_name).render(split, index, seed)


def _task_names(mixture):
  return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def test_registration_lists_directories_only_and_runs_once(library, tmp_path):
  mixtures, seconds = library
  assert seconds < 5  # measured well under a second: no file is read
  assert {m: module.register(DATA) for m, module in zip(mixtures, MODULES)} == mixtures
  # Files that are not even valid data register fine; only reading them fails.
  folder = tmp_path / "eval" / "glue_superglue" / "tonyzhaozh_fewshot" / "rte"
  folder.mkdir(parents=True)
  (folder / "train.jsonl").write_text("not json\n")
  (folder / "val.jsonl").write_text("not json\n")
  (spec,) = glue.specs(str(tmp_path))
  assert spec.name == "rte"
  with pytest.raises(Exception, match="line 1"):
    spec.records("validation")


def test_a_name_taken_by_other_tasks_fails_instead_of_being_skipped(library):
  common.add_mixture_once("test_glue_collision", ["rte_zs_opt"])
  try:
    assert common.add_mixture_once("test_glue_collision", ["rte_zs_opt"]) == "test_glue_collision"
    with pytest.raises(UserError, match="already registered over other tasks"):
      common.add_mixture_once("test_glue_collision", ["cb_zs_opt"])
  finally:
    seqio.MixtureRegistry.remove("test_glue_collision")


def test_counts_names_and_clusters(library):
  mixtures, _ = library
  assert set(mixtures["glue"]) == set(GLUE_DATASETS)
  subjects = mmlu.subjects(DATA)
  assert len(subjects) == 57 and len(mixtures["mmlu"]) == 57 + 2
  assert len(_task_names("mmlu_0shot")) == len(_task_names("mmlu_5shot")) == 57
  assert all(n.endswith("_zs_noopt") for n in _task_names("mmlu_0shot"))
  assert all(n.endswith("_fs_noopt") for n in _task_names("mmlu_5shot"))
  assert len(bbh.tasks(DATA)) == 27 and len(mixtures["bbh"]) == 27 + 2
  assert len(_task_names("bbh_direct")) == len(_task_names("bbh_cot")) == 27
  assert mixtures["gsm8k"] == ["gsm8k"] and _task_names("gsm8k") == ["gsm8k_cot"]
  expected = {"rte": "nli", "cb": "nli", "anli_r2": "nli", "copa": "commonsense",
              "boolq": "reading_comprehension", "sst2": "sentiment", "trec": "topic_classification",
              "ag_news": "topic_classification"}
  for dataset, cluster in expected.items():
    assert {clusters.cluster_of(t) for t in _task_names(dataset)} == {cluster}
  assert clusters.cluster_of("mmlu_anatomy_fs_noopt") == "mmlu"
  assert clusters.cluster_of("bbh_navigate_cot") == "bbh"
  assert clusters.cluster_of("gsm8k_cot") == "arithmetic_cot"
  names = seqio.TaskRegistry.names()
  assert all(re.fullmatch(r"[\w\d\.\:_#]+", n) for n in names)


def test_every_glue_dataset_renders_every_variant_with_its_options(library):
  specs = {spec.name: spec for spec in glue.specs(DATA)}
  for dataset in GLUE_DATASETS:
    spec = specs[dataset]
    assert len(spec.templates) >= 5, dataset
    for task in _task_names(dataset):
      example = _render(task, "validation", index=3)
      assert example["inputs"].strip() and example["targets"].strip(), task
    record = spec.records("validation")[3]
    options = record[spec.options] if isinstance(spec.options, str) else spec.options
    fixed = _render(f"{dataset}_zs_opt", "validation", index=3)
    assert fixed["inputs"].endswith(format_options(options, 0))
    assert fixed["targets"] in options
    assert "OPTIONS:" not in _render(f"{dataset}_zs_noopt", "validation", index=3)["inputs"]
  assert any(spec.inversion_templates for spec in specs.values())
  # Input inversion: BoolQ's question is the target, its answer part of the prompt.
  inverted = _render("boolq_inverted", "validation")
  record = specs["boolq"].records("validation")[0]
  assert inverted["targets"] == record["question"] and f'"{record["answer"]}"' in inverted["inputs"]


def _jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_labels_become_the_words_a_model_answers_with(library):
  few_shot_dir = os.path.join(GLUE_DIR, "tonyzhaozh_fewshot")
  raw = _jsonl(os.path.join(few_shot_dir, "rte", "val.jsonl"))
  rte = glue.load_rte(DATA, "validation")
  for label, answer in (("entailment", "yes"), ("not_entailment", "no")):
    index = next(i for i, r in enumerate(raw) if r["label"] == label)
    assert rte[index]["answer"] == answer and rte[index]["premise"] == raw[index]["premise"]
  raw = _jsonl(os.path.join(few_shot_dir, "cb", "val.jsonl"))
  cb = glue.load_cb(DATA, "validation")
  for label, answer in (("entailment", "yes"), ("neutral", "it is not possible to tell"),
                        ("contradiction", "no")):
    index = next(i for i, r in enumerate(raw) if r["label"] == label)
    assert cb[index]["answer"] == answer
  with open(os.path.join(GLUE_DIR, "anli", "ANLI_analysis_r3_dev.csv"), encoding="utf-8") as f:
    first = next(csv.DictReader(f))
  anli = {r["hypothesis"]: r["answer"] for s in ("train", "validation")
          for r in glue.load_anli(DATA, s, round_=3)}
  assert anli[first["statement"].strip()] == glue.NLI_ANSWERS[first["gold_label"]]
  raw = _jsonl(os.path.join(GLUE_DIR, "copa", "val.jsonl"))[0]
  copa = glue.load_copa(DATA, "validation")[0]
  assert copa["answer"] == raw[f"choice{raw['label'] + 1}"] == copa["options"][raw["label"]]
  assert copa["relation_question"] == "What happened as a result?"  # raw["question"] == "effect"
  assert glue.load_sst2(DATA, "train")[0] == {"sentence": "one long string of cliches .",
                                              "answer": "negative"}
  assert glue.load_trec(DATA, "validation")[0] == {
      "question": "How far is it from Denver to Aspen ?", "answer": "number"}
  news = {r["title"]: r["answer"]
          for s in ("train", "validation") for r in glue.load_ag_news(DATA, s)}
  assert news["Fears for T N pension after talks"] == "Business"
  assert glue.clean_ag_news("Eriksson doesn #39;t, the  #36;10 \\team  quot;x quot;") == (
      'Eriksson doesn\'t, the $10 team "x"')


def test_single_split_datasets_are_held_out_by_group_deterministically(library):
  anli = functools.partial(glue.load_anli, round_=1)
  for load, key in ((glue.load_boolq, "passage"), (anli, "premise"), (glue.load_ag_news, "title")):
    train, validation = load(DATA, "train"), load(DATA, "validation")
    share = len(validation) / (len(train) + len(validation))
    assert 0.1 < share < 0.3
    assert not {r[key] for r in train} & {r[key] for r in validation}
    assert load(DATA, "validation") == validation
  assert len(glue.load_boolq(DATA, "train")) + len(glue.load_boolq(DATA, "validation")) == 3270


def test_mmlu_five_shot_prompt_is_the_five_dev_questions_then_the_test_question(library):
  for subject in mmlu.subjects(DATA):
    dev = mmlu.load(DATA, subject, "train")
    test = mmlu.load(DATA, subject, "test")
    header = f"This is a multiple-choice question on {mmlu.subject_name(subject)}."
    example = _render(f"mmlu_{subject}_fs_noopt", "test", index=0)
    prompt = example["inputs"]
    assert prompt.count(header) == 6, subject  # five exemplars and the question
    query = f"{header}\n\n{test[0]['question']}\n{test[0]['choices_block']}\nAnswer:"
    assert prompt.endswith(query) and example["targets"] == test[0]["answer"]
    for shot in dev:
      shown = f"{shot['question']}\n{shot['choices_block']}\nAnswer:\n{shot['answer']}"
      assert shown in prompt, subject
    zero = _render(f"mmlu_{subject}_zs_noopt", "test", index=0)["inputs"]
    assert zero == query
  anatomy = mmlu.load(DATA, "anatomy", "test")[0]
  assert anatomy["answer"] == "A" and anatomy["choices_block"].startswith(
      "A. paralysis of the facial muscles.\nB. ")


def test_mmlu_five_shot_runs_through_the_seqio_pipeline(library):
  task = seqio.get_mixture_or_task("mmlu_abstract_algebra_fs_noopt")
  examples = list(task.get_dataset(None, split="test", shuffle=False).take(2).as_numpy_iterator())
  assert len(examples) == 2
  assert examples[0]["inputs_pretokenized"].decode().count("Answer:\n") == 5
  assert examples[0]["targets_pretokenized"].decode() in mmlu.LETTERS


def test_bbh_cot_answers_are_read_back_from_gold_chains_of_thought(library):
  for task in bbh.tasks(DATA):
    prompt_file = os.path.join(DATA, "eval", "bbh", "cot-prompts", f"{task}.txt")
    with open(prompt_file, encoding="utf-8") as f:
      _, exemplars = bbh.parse_cot_prompt(f.read())
    records = bbh.load(DATA, task, "test")
    targets = {r["target"] for r in records}
    assert len(exemplars) == 3
    for _, chain in exemplars:
      answer = cot_postprocessor(chain)
      assert chain.endswith(f"So the answer is {answer}.")
      if len(targets) <= 20:  # a closed answer set (letters, yes/no, valid/invalid, counts)
        assert answer in targets, (task, answer)
      assert f"\nA: {answer}" in records[0]["direct_prompt"]
    cot = _render(f"bbh_{task}_cot", "test", index=0)
    assert cot["inputs"].endswith(f"Q: {records[0]['input']}\nA: {bbh.COT_CUE}")
    assert cot["inputs"].count("So the answer is") == 3
    assert cot_postprocessor(cot["targets"], example=cot, is_target=True) == [records[0]["target"]]
    direct = _render(f"bbh_{task}_zs_noopt", "test", index=0)
    assert "step by step" not in direct["inputs"] and direct["targets"] == records[0]["target"]
  # A model's chain of thought scores through the CoT task's own postprocessor.
  task = seqio.get_mixture_or_task("bbh_date_understanding_cot")
  example = _render(task.name, "test")
  assert example["targets"] == "So the answer is (B)."
  prediction = "Today is 12/24/1937, so tomorrow is 12/25/1937. So the answer is (B)."
  assert task.postprocess_fn(prediction, example=example) == "(B)"


def test_gsm8k_targets_end_in_the_answer_and_are_scored_as_numbers(library):
  raw = _jsonl(os.path.join(DATA, "eval", "gsm8k", "test.jsonl"))
  source = _source("gsm8k_cot")
  assert source.num_input_examples("test") == len(raw)
  for index in (0, 1, 2):
    answer = raw[index]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    example = source.render("test", index, None)
    assert example["targets"].endswith(f" So the answer is {answer}.")
    assert extract_answer(example["targets"]) == answer
    assert "<<" not in example["targets"] and "####" not in example["targets"]
    assert example["inputs"].count("\nQ: ") == gsm8k.SHOTS + 1  # fixed train exemplars + question
  assert _render("gsm8k_cot", "test")["inputs"] == source.render("test", 0, 7)["inputs"]
  task = seqio.get_mixture_or_task("gsm8k_cot")
  target = task.postprocess_fn(example["targets"], example=example, is_target=True)
  predictions = [f"Working... So the answer is ${int(answer):,}.", "So the answer is 1."]
  scores = [fn([target], [task.postprocess_fn(p, example=example)])
            for fn in task.predict_metric_fns for p in predictions]
  assert [s["accuracy"] for s in scores] == [100.0, 0.0]

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
from flan_jax.data.variants import format_options
from flan_jax.errors import UserError
from flan_jax.metrics import accuracy
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
  # Each benchmark twice: lm-eval's conventions, and FLAN's (`_flan`).
  assert len(subjects) == 57 and len(mixtures["mmlu"]) == 2 * (57 + 2)
  assert len(_task_names("mmlu_0shot")) == len(_task_names("mmlu_5shot")) == 57
  assert all(n.endswith("_zs_noopt") for n in _task_names("mmlu_0shot"))
  assert all(n.endswith("_fs_noopt") for n in _task_names("mmlu_5shot"))
  assert [n.replace("_flan_", "_") for n in _task_names("mmlu_5shot_flan")] == _task_names(
      "mmlu_5shot")
  assert len(bbh.tasks(DATA)) == 27 and len(mixtures["bbh"]) == 2 * (27 + 2)
  assert len(_task_names("bbh_direct")) == len(_task_names("bbh_cot")) == 27
  assert len(_task_names("bbh_direct_flan")) == len(_task_names("bbh_cot_flan")) == 27
  assert mixtures["gsm8k"] == ["gsm8k", "gsm8k_flan"] and _task_names("gsm8k") == ["gsm8k_cot"]
  assert _task_names("gsm8k_flan") == ["gsm8k_flan_cot"]
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


def _csv(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _mmlu_block(row):
  """A question as lm-eval's default MMLU template writes it, built from the raw CSV row."""
  return (f"{row['question'].strip()}\nA. {row['choice0']}\nB. {row['choice1']}\n"
          f"C. {row['choice2']}\nD. {row['choice3']}\nAnswer:")


def test_mmlu_five_shot_prompt_is_lm_evals_with_the_first_dev_questions_in_order(library):
  dev = _csv(os.path.join(DATA, "eval", "mmlu", "dev", "anatomy_dev.csv"))
  test = _csv(os.path.join(DATA, "eval", "mmlu", "test", "anatomy_test.csv"))
  description = "The following are multiple choice questions (with answers) about anatomy.\n\n"
  shots = [f"{_mmlu_block(row)} {'ABCD'[int(row['answer'])]}\n\n" for row in dev[:5]]
  example = _render("mmlu_anatomy_fs_noopt", "test", index=0)
  assert example["inputs"] == description + "".join(shots) + _mmlu_block(test[0])
  assert example["targets"] == "ABCD"[int(test[0]["answer"])] == "A"
  assert example["options"].split("\x1e") == ["A", "B", "C", "D"]
  # Fewer exemplars (what a short input length keeps) drop the last ones; none is 0-shot.
  assert example["inputs_candidates"][1] == description + "".join(shots[:4]) + _mmlu_block(test[0])
  zero = _render("mmlu_anatomy_zs_noopt", "test", index=0)
  assert zero["inputs"] == example["inputs_candidates"][-1] == description + _mmlu_block(test[0])
  assert zero["options"] == example["options"]
  # The prompt lists A-D itself: no option variants, for any subject.
  assert _task_names("mmlu_anatomy") == ["mmlu_anatomy_fs_noopt", "mmlu_anatomy_zs_noopt"]
  assert not [n for n in seqio.TaskRegistry.names()
              if n.startswith("mmlu_") and n.endswith(("_zs_opt", "_zs_opt_random", "_fs_opt"))]
  assert seqio.get_mixture_or_task("mmlu_anatomy_fs_noopt").predict_metric_fns == [accuracy]


def test_mmlu_every_subject_uses_its_dev_questions_in_file_order(library):
  for subject in mmlu.subjects(DATA):
    dev = mmlu.load(DATA, subject, "train")
    test = mmlu.load(DATA, subject, "test")
    prompt = _render(f"mmlu_{subject}_fs_noopt", "test", index=len(test) - 1)["inputs"]
    blocks = [f"{r['question']}\n{r['choices_block']}\nAnswer: {r['answer']}\n\n" for r in dev]
    assert len(blocks) == 5, subject
    expected = (f"The following are multiple choice questions (with answers) about "
                f"{subject.replace('_', ' ')}.\n\n" + "".join(blocks))
    assert prompt == expected + f"{test[-1]['question']}\n{test[-1]['choices_block']}\nAnswer:"


def test_mmlu_five_shot_runs_through_the_seqio_pipeline(library):
  task = seqio.get_mixture_or_task("mmlu_abstract_algebra_fs_noopt")
  examples = list(task.get_dataset({"inputs": 4096, "targets": 8}, split="test", shuffle=False)
                  .take(2).as_numpy_iterator())
  assert len(examples) == 2
  assert examples[0]["inputs_pretokenized"].decode().count("\nAnswer: ") == 5
  assert examples[0]["targets_pretokenized"].decode() in mmlu.LETTERS
  assert examples[0]["options"].decode().split("\x1e") == list(mmlu.LETTERS)
  # An input length that fits fewer exemplars keeps the first ones.
  short = next(task.get_dataset({"inputs": 700, "targets": 8}, split="test", shuffle=False)
               .as_numpy_iterator())["inputs_pretokenized"].decode()
  assert 0 < short.count("\nAnswer: ") < 5
  assert examples[0]["inputs_pretokenized"].decode().startswith(short.rsplit("\n\n", 1)[0])


def test_mmlu_question_weighted_mean_weights_subjects_by_test_size(library):
  subjects = mmlu.subjects(DATA)
  sizes = {s: len(mmlu.load(DATA, s, "test")) for s in subjects}
  results = {f"mmlu_{s}_fs_noopt/accuracy": (100.0 if s == "anatomy" else 0.0) for s in subjects}
  assert mmlu.question_weighted_mean(results, DATA) == pytest.approx(
      100.0 * sizes["anatomy"] / sum(sizes.values()))


def test_bbh_example_weighted_mean_weights_tasks_by_size(library):
  names = bbh.tasks(DATA)
  sizes = {t: len(bbh.load(DATA, t, "test")) for t in names}
  results = {f"bbh_{t}_cot/exact_match": (100.0 if t == "navigate" else 0.0) for t in names}
  assert bbh.example_weighted_mean(results, DATA) == pytest.approx(
      100.0 * sizes["navigate"] / sum(sizes.values()))
  with pytest.raises(KeyError, match="bbh_boolean_expressions_zs_noopt"):
    bbh.example_weighted_mean(results, DATA, variant="zs_noopt")


def test_bbh_prompts_are_the_published_exemplars_in_lm_evals_layout(library):
  for task in bbh.tasks(DATA):
    with open(os.path.join(DATA, "eval", "bbh", "cot-prompts", f"{task}.txt"), encoding="utf-8") as f:
      body = f.read().split("\n-----\n", 1)[1].strip()
    record = bbh.load(DATA, task, "test")[0]
    # CoT: the published prompt, then the question and the cue on its own line. Every
    # rationale starts on the line after the cue, as in lm-eval (sports_understanding's
    # file puts its rationales on the cue's line).
    body = body.replace("A: Let's think step by step. ", "A: Let's think step by step.\n")
    cot = _render(f"bbh_{task}_cot", "test", index=0)
    assert cot["inputs"] == f"{body}\n\nQ: {record['input']}\nA: Let's think step by step.\n", task
    assert cot["targets"] == record["target"]
    direct = _render(f"bbh_{task}_zs_noopt", "test", index=0)
    assert direct["inputs"].endswith(f"\n\nQ: {record['input']}\nA:") and "step by step" not in (
        direct["inputs"])
    assert direct["inputs"].count("\nA: ") == 3 and direct["targets"] == record["target"]
  date = _render("bbh_date_understanding_zs_noopt", "test", index=0)["inputs"]
  assert date.startswith("Infer the date from context.\n\nQ: Today is Christmas Eve of 1937. ")
  shots = date.split("\n\n")
  assert [s.rsplit("\nA: ", 1)[1] for s in shots[1:4]] == ["(D)", "(B)", "(B)"]


def test_bbh_cot_answers_are_read_as_lm_eval_reads_them(library):
  assert bbh.cot_answer("December 14, 1937. So the answer is (D).") == "(D)"
  assert bbh.cot_answer("So the answer is -12.") == "-12"
  assert bbh.cot_answer("So the answer is ] ) }.") == "] ) }"
  assert bbh.cot_answer("So the answer is (D)") == "(D"  # lm-eval drops the last character
  assert bbh.cot_answer("The answer is (D).") == "[invalid]"  # case-sensitive; scores 0
  assert bbh.cot_answer("the answer is (A). Or the answer is (B).") == "(A). Or the answer is (B)"
  for task in bbh.tasks(DATA):
    with open(os.path.join(DATA, "eval", "bbh", "cot-prompts", f"{task}.txt"), encoding="utf-8") as f:
      _, exemplars = bbh.parse_cot_prompt(f.read())
    targets = {r["target"] for r in bbh.load(DATA, task, "test")}
    assert len(exemplars) == 3
    for _, rationale in exemplars:
      answer = bbh.cot_answer(rationale)
      assert rationale.endswith(f"the answer is {answer}."), task
      if len(targets) <= 20:  # a closed answer set (letters, yes/no, valid/invalid, counts)
        assert answer in targets, (task, answer)
  # Through the registered tasks: generation stops at lm-eval's stop sequences, then
  # the answer must equal the target exactly.
  task = seqio.get_mixture_or_task("bbh_date_understanding_cot")
  example = _render(task.name, "test")
  assert example["targets"] == "(B)"
  target = task.postprocess_fn(example["targets"], example=example, is_target=True)
  assert target == ["(B)"]
  prediction = ("Today is 12/24/1937, so tomorrow is 12/25/1937. So the answer is (B).\n\n"
                "Q: Yesterday was ... So the answer is (C).")
  predictions = [task.postprocess_fn(p, example=example) for p in
                 (prediction, "So the answer is (b).", "No final answer.")]
  assert predictions == ["(B)", "(b)", "[invalid]"]
  assert [fn([target], [p]) for fn in task.predict_metric_fns for p in predictions] == [
      {"exact_match": 100.0}, {"exact_match": 0.0}, {"exact_match": 0.0}]
  # Dyck answers are all punctuation: they must match as written, not normalised away.
  dyck = seqio.get_mixture_or_task("bbh_dyck_languages_cot")
  assert dyck.predict_metric_fns[0]([["] ]"]], [dyck.postprocess_fn("So the answer is ].")]) == {
      "exact_match": 0.0}
  direct = seqio.get_mixture_or_task("bbh_date_understanding_zs_noopt")
  # Answer-only text is compared as lm-eval compares it, whitespace included (more
  # cases in tests/test_gsm8k_bbh_conventions.py).
  assert [direct.postprocess_fn(t) for t in (" (B)\n\nQ: next", "(B) Quite sure.", "(B)")] == [
      " (B)", "(B) ", "(B)"]


def test_gsm8k_prompt_is_lm_evals_eight_exemplars_then_the_question(library):
  # The whole prompt, character for character: tests/test_gsm8k_bbh_conventions.py.
  test = _jsonl(os.path.join(DATA, "eval", "gsm8k", "test.jsonl"))
  source = _source("gsm8k_cot")
  assert source.num_input_examples("test") == len(test)
  example = _render("gsm8k_cot", "test", index=0)
  prompt = example["inputs"]
  assert prompt.startswith("Q: There are 15 trees in the grove. ")
  assert prompt.endswith(f"\n\nQ: {test[0]['question']}\nA:")
  blocks = prompt.split("\n\n")
  assert len(blocks) == gsm8k.SHOTS + 1
  for block, (question, target) in zip(blocks, gsm8k.LM_EVAL_EXEMPLARS):
    assert block == f"Q: {question}\nA: {target}" and block.count("\n") == 1
  assert source.render("test", 0, 7)["inputs"] == prompt  # fixed exemplars, whatever the seed
  assert _render("gsm8k_cot", "test", index=5)["inputs"].startswith("\n\n".join(blocks[:-1]))
  answer = test[0]["answer"].rsplit("####", 1)[1].strip()
  assert example["targets"].endswith(f" The answer is {answer}.")
  assert example["references"] == answer


def test_gsm8k_exemplars_file_replaces_lm_evals_exemplars(tmp_path):
  folder = tmp_path / "eval" / "gsm8k"
  folder.mkdir(parents=True)
  (folder / "test.jsonl").write_text(json.dumps(
      {"question": "What is 2 + 3? ", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}) + "\n")
  (folder / "cot_exemplars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
      {"question": "What is 1 + 1?", "target": "1 + 1 = 2. The answer is 2."},
      {"question": "What is 2 * 3?", "target": "2 * 3 = 6. The answer is 6."})))
  (record,) = gsm8k.load(str(tmp_path), "test")
  assert gsm8k.TEMPLATE.render(record) == (
      "Q: What is 1 + 1?\nA: 1 + 1 = 2. The answer is 2.\n\n"
      "Q: What is 2 * 3?\nA: 2 * 3 = 6. The answer is 6.\n\n"
      "Q: What is 2 + 3?\nA:", "2 + 3 = 5. The answer is 5.")
  assert record["final_answers"] == ["5"]


def test_gsm8k_scores_the_number_before_the_next_question(library):
  task = seqio.get_mixture_or_task("gsm8k_cot")
  example = _render("gsm8k_cot", "test", index=0)
  answer = example["references"]
  target = task.postprocess_fn(example["targets"], example=example, is_target=True)
  assert target == [answer]
  # A model that goes on with a new "Q:" is scored on what it said before it.
  rambling = task.postprocess_fn(
      f"She has 9 eggs left. The answer is {answer}.\n\nQ: Tom has 3 apples.\nA: The answer is 3.",
      example=example)
  assert rambling == f"She has 9 eggs left. The answer is {answer}.\n\n"
  scores = {}
  for fn in task.predict_metric_fns:
    scores.update(fn([target], [rambling]))
  assert scores == {"numeric_match": 100.0, "strict_match": 100.0, "flexible_extract": 100.0}
  # By hand: the three readings of one answer.
  def score(prediction, reference="1200"):
    return {k: v for fn in task.predict_metric_fns for k, v in fn([[reference]], [prediction]).items()}
  assert score("So she makes $1,200. The answer is 1,200.") == {
      "numeric_match": 100.0, "strict_match": 100.0, "flexible_extract": 100.0}
  assert score("The total is 1200 dollars. The answer is $1,200.") == {
      "numeric_match": 100.0, "strict_match": 0.0, "flexible_extract": 100.0}
  assert score("The answer is 1200. Check: 1200 - 200 = 1000.") == {
      "numeric_match": 100.0, "strict_match": 100.0, "flexible_extract": 0.0}
  assert score("It costs 1,200.5 dollars.") == {
      "numeric_match": 0.0, "strict_match": 0.0, "flexible_extract": 0.0}

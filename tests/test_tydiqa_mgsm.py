"""TyDiQA GoldP and MGSM from tiny files in their published formats (written in tmp_path).

Expected prompts and scores are written out by hand from the conventions (open-instruct's
TyDiQA prompt, SQuAD's normalisation, GSM8K's chain-of-thought layout), not from our code.
"""

import json
import logging

import pytest
import seqio

from flan_jax.data import clusters
from flan_jax.metrics import normalized_exact_match, token_f1
from flan_jax_tasks.library import gsm8k, mgsm, tydiqa


def _squad(questions):
  """SQuAD-format JSON: one article, a paragraph per (context, [(id, question, [answers])])."""
  return json.dumps({"version": "TyDiQA-GoldP-1.1", "data": [{"title": "t", "paragraphs": [
      {"context": context, "qas": [
          {"id": qid, "question": question,
           "answers": [{"text": a, "answer_start": context.find(a)} for a in answers]}
          for qid, question, answers in qas]}
      for context, qas in questions]}]}, ensure_ascii=False)


DEV = [
    ("Paris is the capital of France.", [
        ("english-1", "What is the capital of France?", ["Paris"])]),
    ("The Nile flows through Egypt and Sudan.", [
        ("english-2", "Which river flows through Egypt?", ["The Nile", "Nile"])]),
    ("Helsinki on Suomen pääkaupunki.", [
        ("finnish-1", "Mikä on Suomen pääkaupunki?", ["Helsinki"])]),
]
TRAIN = [
    ("Oslo is in Norway.", [("finnish-9", "Missä Oslo on?", ["Norjassa"]),
                            ("english-9", "Where is Oslo?", ["Norway"])]),
    ("Rome is in Italy.", [("english-10", "Where is Rome?", ["Italy"])]),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  folder = root / "eval" / "tydiqa"
  folder.mkdir(parents=True)
  (folder / tydiqa.DEV_FILE).write_text(_squad(DEV), encoding="utf-8")
  (folder / tydiqa.TRAIN_FILE).write_text(_squad(TRAIN), encoding="utf-8")
  folder = root / "eval" / "mgsm"
  folder.mkdir(parents=True)
  # Published layout: question<TAB>answer_number, no header.
  (folder / "mgsm_en.tsv").write_text(
      "Tom has 3 apples and buys 4 more. How many apples does he have?\t7\n"
      "A pen costs $2. How much do 600 pens cost?\t1200\n", encoding="utf-8")
  (folder / "mgsm_de.tsv").write_text(
      "Anna hat 5 Äpfel und isst 2. Wie viele Äpfel hat sie noch?\t3\n", encoding="utf-8")
  return str(root)


@pytest.fixture(scope="module")
def registered(data_dir):
  return tydiqa.register(data_dir), mgsm.register(data_dir)


def _tasks(mixture):
  return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def test_registration_from_a_data_dir(registered, data_dir):
  tydiqa_names, mgsm_names = registered
  assert tydiqa_names == [f"tydiqa_goldp_{lang}" for lang in tydiqa.LANGUAGES] + ["tydiqa_goldp"]
  assert _tasks("tydiqa_goldp") == sorted(f"tydiqa_goldp_{lang}_1shot" for lang in tydiqa.LANGUAGES)
  assert mgsm_names == ["mgsm_de", "mgsm_en", "mgsm"]
  assert _tasks("mgsm") == ["mgsm_de_cot", "mgsm_en_cot"]
  assert clusters.cluster_of("tydiqa_goldp_english_1shot") == "tydiqa"
  assert clusters.cluster_of("mgsm_en_cot") == "arithmetic_cot"
  # Registering again is a no-op.
  assert (tydiqa.register(data_dir), mgsm.register(data_dir)) == registered
  source = seqio.get_mixture_or_task("tydiqa_goldp_english_1shot").source
  assert source.num_input_examples("test") == 2
  assert seqio.get_mixture_or_task("mgsm_en_cot").source.num_input_examples("test") == 2


def test_tydiqa_prompt_is_open_instructs_one_shot_layout(registered):
  source = seqio.get_mixture_or_task("tydiqa_goldp_english_1shot").source
  example = source.render("test", 1, 0)
  # By hand: instruction, blank line, the first English train question answered, blank
  # line, then the question ending in "Answer:".
  assert example["inputs"] == (
      "Answer the following question based on the information in the given passage.\n\n"
      "Passage: Oslo is in Norway.\nQuestion: Where is Oslo?\nAnswer: Norway\n\n"
      "Passage: The Nile flows through Egypt and Sudan.\n"
      "Question: Which river flows through Egypt?\nAnswer:")
  assert example["targets"] == "The Nile"
  task = seqio.get_mixture_or_task("tydiqa_goldp_english_1shot")
  assert task.postprocess_fn(example["targets"], example=example, is_target=True) == [
      "The Nile", "Nile"]
  # Finnish takes its own exemplar (the first Finnish train question).
  finnish = seqio.get_mixture_or_task("tydiqa_goldp_finnish_1shot").source.render("test", 0, 0)
  assert "Passage: Oslo is in Norway.\nQuestion: Missä Oslo on?\nAnswer: Norjassa\n\n" in (
      finnish["inputs"])
  assert finnish["inputs"].endswith("Question: Mikä on Suomen pääkaupunki?\nAnswer:")


def test_tydiqa_generation_stops_at_the_first_newline(registered):
  task = seqio.get_mixture_or_task("tydiqa_goldp_english_1shot")
  assert task.postprocess_fn(" the Nile.\nQuestion: Where is Rome?\nAnswer: Italy") == "the Nile."


def test_tydiqa_zero_shot_without_the_train_file(tmp_path):
  folder = tmp_path / "eval" / "tydiqa" / tydiqa.PER_LANGUAGE_DIR
  folder.mkdir(parents=True)
  (folder / "tydiqa-goldp-dev-english.json").write_text(_squad(DEV[:1]))
  assert tydiqa.languages(str(tmp_path)) == ["english"]
  assert tydiqa.variant(str(tmp_path)) == "0shot"
  (record,) = tydiqa.load(str(tmp_path), "english", "test")
  assert tydiqa.TEMPLATE.render(record) == (
      "Answer the following question based on the information in the given passage.\n\n"
      "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?\n"
      "Answer:", "Paris")
  with pytest.raises(ValueError, match="No finnish question"):
    tydiqa.load(str(tmp_path), "finnish", "test")


def test_squad_exact_match_and_f1_by_hand():
  targets = [["The Nile", "Nile"], ["Paris"], ["New York City"], ["an apple"]]
  predictions = ["nile.", "Paris, France", "the city of New York", "Apple!"]
  # EM: "nile" == "nile" (article and period gone); "paris france" != "paris";
  # "city of new york" != "new york city"; "apple" == "apple".
  assert normalized_exact_match(targets, predictions) == {"normalized_exact_match": 50.0}
  # F1: 1; P=1/2, R=1 -> 2/3; common {new, york, city}=3, P=3/4, R=3/3 -> 6/7; 1.
  expected = 100 * (1 + 2 / 3 + 6 / 7 + 1) / 4
  assert token_f1(targets, predictions)["token_f1"] == pytest.approx(expected)
  # The best gold answer counts: "nile river" against "nile" gives P=1/2, R=1 -> 2/3,
  # against "nile river" 1; the example scores 1, not the mean 5/6.
  assert token_f1([["Nile", "Nile River"]], ["the Nile river"])["token_f1"] == pytest.approx(100)
  assert token_f1([["Nile"]], ["the Nile river"])["token_f1"] == pytest.approx(200 / 3)


def test_tydiqa_scores_through_the_task_and_averages_languages(registered):
  task = seqio.get_mixture_or_task("tydiqa_goldp_english_1shot")
  source = task.source
  examples = [source.render("test", i, 0) for i in range(2)]
  targets = [task.postprocess_fn(e["targets"], example=e, is_target=True) for e in examples]
  predictions = [task.postprocess_fn(p) for p in (" Paris\nQuestion: x", " the nile")]
  scores = {k: v for fn in task.predict_metric_fns for k, v in fn(targets, predictions).items()}
  assert scores == {"normalized_exact_match": 100.0, "token_f1": 100.0}
  results = {"tydiqa_goldp_english_1shot/token_f1": 80.0,
             "tydiqa_goldp_finnish_1shot/token_f1": 40.0}
  assert tydiqa.language_mean(results, ["english", "finnish"]) == 60.0
  with pytest.raises(KeyError, match="tydiqa_goldp_korean_1shot/token_f1"):
    tydiqa.language_mean(results, ["english", "korean"])


def test_mgsm_prompt_is_gsm8ks_exemplars_in_question_answer_layout(registered):
  example = seqio.get_mixture_or_task("mgsm_de_cot").source.render("test", 0, 0)
  prompt = example["inputs"]
  blocks = prompt.split("\n\n")
  assert blocks[0] == "Answer the following questions."
  assert blocks[1] == (
      "Question: There are 15 trees in the grove. Grove workers will plant trees in the grove "
      "today. After they are done, there will be 21 trees. How many trees did the grove workers "
      "plant today?\nAnswer: There are 15 trees originally. Then there were 21 trees after some "
      "more were planted. So there must have been 21 - 15 = 6. The answer is 6.")
  assert len(blocks) == 1 + gsm8k.SHOTS + 1
  assert blocks[-1] == (
      "Question: Anna hat 5 Äpfel und isst 2. Wie viele Äpfel hat sie noch?\nAnswer:")
  assert example["references"] == "3"


def test_mgsm_reads_the_last_number_and_averages_languages(registered):
  task = seqio.get_mixture_or_task("mgsm_en_cot")
  examples = [task.source.render("test", i, 0) for i in range(2)]
  targets = [task.postprocess_fn(e["targets"], example=e, is_target=True) for e in examples]
  assert targets == [["7"], ["1200"]]
  # The last number before the next "Question:": 7 (right); 1,200 -> 1200 but then 5 (wrong).
  predictions = [task.postprocess_fn(p) for p in (
      "3 + 4 = 7. The answer is 7.\n\nQuestion: 2 + 2?\nAnswer: 4",
      "600 * 2 = $1,200. That is 5 boxes.")]
  assert predictions[0] == "3 + 4 = 7. The answer is 7.\n\n"
  scores = {k: v for fn in task.predict_metric_fns for k, v in fn(targets, predictions).items()}
  assert scores["flexible_extract"] == 50.0
  assert gsm8k.flexible_answer("600 * 2 = $1,200.") == "$1,200."
  assert task.predict_metric_fns[0]([["1200"]], ["600 * 2 = $1,200."]) == {
      "flexible_extract": 100.0}
  results = {"mgsm_en_cot/flexible_extract": 50.0, "mgsm_de_cot/flexible_extract": 100.0}
  assert mgsm.language_mean(results, ["en", "de"]) == 75.0


def test_mgsm_rejects_a_row_without_its_answer(tmp_path):
  folder = tmp_path / "eval" / "mgsm"
  folder.mkdir(parents=True)
  (folder / "mgsm_fr.tsv").write_text("Combien font 2 + 2 ?\n")
  with pytest.raises(Exception, match="mgsm_fr.tsv"):
    mgsm.load(str(tmp_path), "fr", "test")


def test_missing_data_is_skipped_with_one_line_saying_where(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    assert tydiqa.register(str(tmp_path)) == []
    assert mgsm.register(str(tmp_path)) == []
  messages = [r.getMessage() for r in caplog.records]
  tydiqa_lines = [m for m in messages if m.startswith("TyDiQA skipped")]
  mgsm_lines = [m for m in messages if m.startswith("MGSM skipped")]
  assert len(tydiqa_lines) == 1 and len(mgsm_lines) == 1
  assert str(tmp_path / "eval" / "tydiqa") in tydiqa_lines[0] and "\n" not in tydiqa_lines[0]
  assert str(tmp_path / "eval" / "mgsm") in mgsm_lines[0] and "\n" not in mgsm_lines[0]


def test_the_library_entry_point_registers_both_for_evaluation_only():
  from flan_jax_tasks import library  # pylint: disable=g-import-not-at-top
  for name in ("tydiqa", "mgsm"):
    assert name in library.SUBMODULES and name in library.EVALUATION_ONLY


def test_both_run_through_the_seqio_pipeline(registered):
  lengths = {"inputs": 4096, "targets": 64}
  task = seqio.get_mixture_or_task("tydiqa_goldp_finnish_1shot")
  (example,) = list(task.get_dataset(lengths, split="test", shuffle=False).as_numpy_iterator())
  assert example["inputs_pretokenized"].decode().endswith(
      "Passage: Helsinki on Suomen pääkaupunki.\n"
      "Question: Mikä on Suomen pääkaupunki?\nAnswer:")
  assert example["targets_pretokenized"].decode() == "Helsinki"
  task = seqio.get_mixture_or_task("mgsm_en_cot")
  examples = list(task.get_dataset(lengths, split="test", shuffle=False).as_numpy_iterator())
  assert [e["targets_pretokenized"].decode() for e in examples] == [
      "The answer is 7.", "The answer is 1200."]
  assert all(e["inputs_pretokenized"].decode().count("\nAnswer: ") == gsm8k.SHOTS
             for e in examples)

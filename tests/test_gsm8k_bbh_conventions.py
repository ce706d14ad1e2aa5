"""GSM8K's and BBH's prompts and answer extraction against lm-evaluation-harness 0.4.x,
written out by hand from its task configs (`gsm8k_cot`, `bbh_fewshot`, `bbh_cot_fewshot`).

The expected strings are not computed from our code: the GSM8K prompt is lm-eval's
context for a test question, assembled by hand from gsm8k-cot.yaml (its eight
`fewshot_config.samples`, `doc_to_text: "Q: {{question}}\\nA:"`, the default target
delimiter " " and few-shot delimiter "\\n\\n"); the BBH table gives, per generation,
what lm-eval's filters and `exact_match` make of it.
"""

import json
import os

import pytest
import seqio

from flan_jax_tasks.library import bbh, gsm8k

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"no real data at {DATA}")

# --- GSM8K

# lm-eval's `gsm8k_cot` context for the first test question, by hand: each exemplar
# "Q: <question>\nA:" + " " + "<target>" + "\n\n", then "Q: <question>\nA:".
LM_EVAL_GSM8K_FIRST_PROMPT = (
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
    "After they are done, there will be 21 trees. How many trees did the grove workers plant "
    "today?\n"
    "A: There are 15 trees originally. Then there were 21 trees after some more were planted. "
    "So there must have been 21 - 15 = 6. The answer is 6.\n\n"
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
    "parking lot?\n"
    "A: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n"
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
    "have left in total?\n"
    "A: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
    "After eating 35, they had 74 - 35 = 39. The answer is 39.\n\n"
    "Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
    "many lollipops did Jason give to Denny?\n"
    "A: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
    "Denny 20 - 12 = 8. The answer is 8.\n\n"
    "Q: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many "
    "toys does he have now?\n"
    "A: Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
    "more toys. 5 + 4 = 9. The answer is 9.\n\n"
    "Q: There were nine computers in the server room. Five more computers were installed each "
    "day, from monday to thursday. How many computers are now in the server room?\n"
    "A: There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
    "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.\n\n"
    "Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
    "more. How many golf balls did he have at the end of wednesday?\n"
    "A: Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
    "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.\n\n"
    "Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
    "A: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
    "has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.\n\n"
    "Q: Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
    "bakes muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
    "farmers' market?\n"
    "A:")


def _test_file(folder, train=False):
  folder.mkdir(parents=True)
  (folder / "test.jsonl").write_text(json.dumps(
      {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}) + "\n")
  if train:  # train problems must not become the exemplars
    (folder / "train.jsonl").write_text(json.dumps(
        {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}) + "\n")


def test_gsm8k_exemplars_are_lm_evals_fixed_eight_not_train_problems(tmp_path):
  _test_file(tmp_path / "eval" / "gsm8k", train=True)
  shots = gsm8k.exemplars(str(tmp_path))
  assert len(shots) == 8 and gsm8k.SHOTS == 8
  assert shots[0][0].startswith("There are 15 trees in the grove.")
  assert shots[0][1].endswith("21 - 15 = 6. The answer is 6.")
  assert shots[-1] == ("Olivia has $23. She bought five bagels for $3 each. How much money does "
                       "she have left?", "Olivia had 23 dollars. 5 bagels for 3 dollars each "
                       "will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. "
                       "The answer is 8.")
  assert all("1 + 1" not in q for q, _ in shots)
  (record,) = gsm8k.load(str(tmp_path), "test")
  inputs, target = gsm8k.TEMPLATE.render(record)
  head = LM_EVAL_GSM8K_FIRST_PROMPT.rsplit("Q: Janet", 1)[0]
  assert inputs == head + "Q: What is 2 + 3?\nA:"
  assert target == "2 + 3 = 5. The answer is 5."


def test_gsm8k_exemplars_file_counts_what_it_ignores_and_rejects_an_empty_file(tmp_path, caplog):
  folder = tmp_path / "eval" / "gsm8k"
  _test_file(folder)
  rows = [{"question": f"What is {n} + 1?", "target": f"{n} + 1 = {n + 1}. The answer is {n + 1}."}
          for n in range(10)]
  (folder / "cot_exemplars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with caplog.at_level("WARNING"):
    shots = gsm8k.exemplars(str(tmp_path))
  assert shots == [(r["question"], r["target"]) for r in rows[:8]]
  assert "10 exemplars" in caplog.text and "2 ignored" in caplog.text
  (folder / "cot_exemplars.jsonl").write_text("")
  with pytest.raises(ValueError, match="cot_exemplars.jsonl"):
    gsm8k.exemplars(str(tmp_path))


@needs_data
def test_gsm8k_first_prompt_is_lm_evals_character_for_character():
  gsm8k.register(DATA)
  source = seqio.get_mixture_or_task("gsm8k_cot").source
  example = source.render("test", 0, 0)
  assert example["inputs"] == LM_EVAL_GSM8K_FIRST_PROMPT
  assert source.render("test", 0, 7)["inputs"] == LM_EVAL_GSM8K_FIRST_PROMPT  # whatever the seed
  assert example["references"] == "18"
  # lm-eval stops at "Q:", "</s>" and "<|im_end|>".
  assert gsm8k.STOP_SEQUENCES == ("Q:", "</s>", "<|im_end|>")


# --- BBH

# (generation, target, what lm-eval's filter makes of it, lm-eval's exact_match), by hand.
# Both variants first cut the generation at the first "</s>", "Q" or "\n\n" (`until`).
# Answer-only (`bbh_fewshot`): no filter, so the cut text as it is; exact_match with
# no ignore_case, ignore_punctuation or regexes_to_ignore, so plain string equality.
BBH_DIRECT = [
    ("False", "False", "False", 1),
    ("False ", "False", "False ", 0),  # trailing space kept
    ("(A)\n", "(A)", "(A)\n", 0),  # a single newline is no stop sequence
    (" (B)", "(B)", " (B)", 0),  # a decoded leading space kept
    ("(B)\n\nQ: next question", "(B)", "(B)", 1),
    ("True\n\n", "True", "True", 1),
    ("(B) Quite sure.", "(B)", "(B) ", 0),  # cut at the "Q" of "Quite", the space stays
    ("Quite so.", "(B)", "", 0),
    ("", "False", "", 0),
    ("Valid", "valid", "Valid", 0),  # case counts
    ("Yes.", "Yes", "Yes.", 0),  # punctuation counts
    ("] ) }", "] ) }", "] ) }", 1),
    ("12", "-12", "12", 0),
    ("(C)</s>(D)", "(C)", "(C)", 1),
]
# Chain of thought (`bbh_cot_fewshot`): the regex filter "(?<=the answer is )(.*)(?=.)",
# first match (take_first), stripped; "[invalid]" when nothing matches. `.` stops at a
# newline, so the answer is the rest of that line less its last character.
BBH_COT = [
    ("So the answer is (B).", "(B)", "(B)", 1),
    ("the answer is (B).", "(B)", "(B)", 1),
    ("Let's see. So the answer is (B).\n\nQ: next. So the answer is (C).", "(B)", "(B)", 1),
    ("So the answer is (B).\nDone.", "(B)", "(B)", 1),
    ("So the answer is (B)", "(B)", "(B", 0),  # no period: the last real character goes
    ("So the answer is  False .", "False", "False", 1),  # the filter strips
    ("So the answer is 5", "5", "", 0),  # matches with an empty answer
    ("So the answer is (b).", "(B)", "(b)", 0),
    ("The answer is (B).", "(B)", "[invalid]", 0),  # case-sensitive phrase
    ("the answer is (A). Or the answer is (B).", "(B)", "(A). Or the answer is (B)", 0),
    ("So the answer is ] ) }.", "] ) }", "] ) }", 1),
    ("So the answer is -12.", "-12", "-12", 1),
    ("So the answer is \n(B).", "(B)", "[invalid]", 0),
    ("Quickly: the answer is (A).", "(A)", "[invalid]", 0),  # cut at "Q" first
    ("", "(A)", "[invalid]", 0),
    ("No final answer.", "(A)", "[invalid]", 0),
]


@pytest.mark.parametrize("generation, target, extracted, hit", BBH_DIRECT)
def test_bbh_answer_only_extraction_and_exact_match_are_lm_evals(generation, target, extracted,
                                                                 hit):
  assert bbh.direct_postprocessor(generation) == extracted
  assert bbh.exact_match([[target]], [extracted]) == {"exact_match": 100.0 * hit}


@pytest.mark.parametrize("generation, target, extracted, hit", BBH_COT)
def test_bbh_cot_extraction_and_exact_match_are_lm_evals(generation, target, extracted, hit):
  assert bbh.cot_postprocessor(generation) == extracted
  assert bbh.exact_match([[target]], [extracted]) == {"exact_match": 100.0 * hit}


def test_bbh_tasks_use_these_extractions_and_the_mean_over_the_table():
  spec = bbh.spec(DATA, "navigate")  # records load lazily; no data needed
  assert spec.postprocess_fns == {"zs_noopt": bbh.direct_postprocessor,
                                  "cot": bbh.cot_postprocessor}
  for table, extract in ((BBH_DIRECT, bbh.direct_postprocessor), (BBH_COT, bbh.cot_postprocessor)):
    targets = [[target] for _, target, _, _ in table]
    score = bbh.exact_match(targets, [extract(g) for g, _, _, _ in table])["exact_match"]
    assert score == pytest.approx(100.0 * sum(hit for *_, hit in table) / len(table))

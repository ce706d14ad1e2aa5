"""flan_jax's MMLU, BBH and GSM8K against lm-evaluation-harness itself, question by question.

The same Hugging Face checkpoint (stories260K, a real tiny Llama) is evaluated by
lm-eval's HF backend on its own task configs (`mmlu_<subject>`, `bbh_cot_fewshot_<task>`,
`gsm8k_cot`, pointed at the local files) and by flan_jax's evaluator on the library's
tasks. Prompts must be equal character for character, MMLU's letters chosen alike with
every letter's log-likelihood within 1e-4, and BBH's and GSM8K's cut generations and
extracted answers equal. A few questions per task keep it small; the full sets are
benchmarks/lm_eval_parity.py's job.
"""

import os

import pytest

from benchmarks import lm_eval_parity as parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES), reason=f"no real data at {DATA}")

SUBJECT = "high_school_geography"  # short questions: the 5-shot rows still need cutting
BBH_TASKS = ("date_understanding",)
QUESTIONS = 3
MAX_GEN_TOKS = 16


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
  include = str(tmp_path_factory.mktemp("lm_eval_tasks"))
  names = parity.write_lm_eval_configs(DATA, include, [SUBJECT], BBH_TASKS, gsm8k=True)
  ours = parity.FlanJaxModel(STORIES, batch_size=8)
  library = parity.register_library_tasks(DATA, ours.vocabulary, [SUBJECT], BBH_TASKS, gsm8k=True)
  theirs = parity.lm_eval_model(STORIES, batch_size=8)
  from lm_eval.tasks import TaskManager
  return include, names, ours, (theirs, TaskManager(include_path=include)), library


@pytest.mark.parametrize("shots, variant", [(0, "zs_noopt"), (5, "fs_noopt")])
def test_mmlu_letters_and_log_likelihoods_are_lm_evals(sides, shots, variant):
  include, names, ours, theirs, library = sides
  ((lm_task, _),) = names["mmlu"]
  samples = parity.run_lm_eval(theirs[0], include, [lm_task], num_fewshot=shots,
                               limit=QUESTIONS, task_manager=theirs[1])[lm_task]
  task = library[f"mmlu:{SUBJECT}"][variant]
  mine = ours.evaluate([task], {"inputs": 1 << 20, "targets": 4}, QUESTIONS)[task.name]
  assert len(mine) == len(samples) == QUESTIONS
  for record, sample in zip(mine, samples):
    assert record["inputs"] == sample["arguments"][0][0]  # lm-eval's context, exactly
    assert [argument[1] for argument in sample["arguments"]] == [" A", " B", " C", " D"]
    their_scores = [float(response[0]) for response in sample["filtered_resps"]]
    assert record["option_log_likelihoods"] == pytest.approx(their_scores, abs=1e-4)
    assert record["output"] == "ABCD"[their_scores.index(max(their_scores))]
  if shots:  # 5-shot prompts are longer than the model's 512 positions: both cut the front
    assert all(len(ours.vocabulary.encode(r["inputs"])) > 512 for r in mine)
  agreement = parity.Agreement()
  parity.compare_mmlu(mine, samples, agreement, task.name)
  assert agreement.percent == 100.0 and agreement.max_log_likelihood_difference < 1e-4


@pytest.mark.parametrize("suite", ["bbh", "gsm8k"])
def test_generations_and_extracted_answers_are_lm_evals(sides, suite):
  from flan_jax_tasks.library import bbh, gsm8k
  include, names, ours, theirs, library = sides
  lm_tasks = [lm_task for lm_task, _ in names[suite]]
  samples = parity.run_lm_eval(theirs[0], include, lm_tasks, limit=QUESTIONS,
                               gen_kwargs=f"max_gen_toks={MAX_GEN_TOKS}", task_manager=theirs[1])
  tasks = [library[f"{suite}:{name}"]["cot"] for _, name in names[suite]]
  # lm-eval keeps max_length - max_gen_toks context tokens and generates max_gen_toks.
  lengths = {"inputs": ours.max_length - MAX_GEN_TOKS, "targets": MAX_GEN_TOKS}
  mine = ours.evaluate(tasks, lengths, QUESTIONS)
  stops = bbh.STOP_SEQUENCES if suite == "bbh" else gsm8k.STOP_SEQUENCES
  extractors = parity.bbh_extractors() if suite == "bbh" else parity.gsm8k_extractors()
  generated = []
  for lm_task, task in zip(lm_tasks, tasks):
    questions = parity._by_question(samples[lm_task])
    assert len(questions) == len(mine[task.name])
    for record, by_filter in zip(mine[task.name], questions):
      assert set(by_filter) == set(extractors)  # lm-eval's filters, each compared
      sample = next(iter(by_filter.values()))
      assert record["inputs"] == sample["arguments"][0][0]
      text = bbh.cut_at_stop_sequences(record["output"], stops)
      assert text == sample["resps"][0][0]
      for name, extract in extractors.items():
        assert extract(text) == parity._answer(by_filter[name]), name
      # What the task's own postprocessor scores is that same extraction.
      if suite == "bbh":
        assert record["prediction"] == parity._answer(by_filter["get-answer"])
      generated.append(text)
  assert any(text.strip() for text in generated)  # the model did write something

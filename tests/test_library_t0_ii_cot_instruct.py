"""The T0, Instruction Induction, CoT and instruct libraries register from the shared data.

The last test registers the whole library and checks each task's declared metrics.

Registries are global, so the fixture calls each submodule's `register` directly;
they are no-ops when another test already registered the library in this process.
"""

import os
import re
import time

import pytest
import seqio

from flan_jax.data import clusters, mixtures
from flan_jax.data.flan_task import REFERENCE_SEPARATOR
from flan_jax.data.variants import extract_answer
from flan_jax import metrics
from flan_jax_tasks.library import common, cot, instruct, instruction_induction, t0
from flan_jax_tasks.library import register as register_library

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(os.path.dirname(REPO), "shared", "data")
MODULES = {"t0": t0, "instruction_induction": instruction_induction, "cot": cot,
           "instruct": instruct}
pytestmark = pytest.mark.skipif(not os.path.isdir(DATA_DIR), reason=f"no data at {DATA_DIR}")


def _readers_used() -> int:
  return sum(read.cache_info().currsize
             for read in (t0._read, cot._read, instruct.read_alpaca, instruct.read_lima))


@pytest.fixture(scope="module")
def library():
  fresh = "t0" not in seqio.MixtureRegistry.names()
  # Other tests in this process may have read a file already (the cached readers are
  # shared): count only what registration reads.
  read_before = _readers_used()
  start = time.perf_counter()
  mixtures_of = {name: module.register(DATA_DIR) for name, module in MODULES.items()}
  seconds = time.perf_counter() - start
  return {"mixtures": mixtures_of, "seconds": seconds, "fresh": fresh,
          "reads_at_registration": _readers_used() - read_before}


def _tasks(mixture_names) -> list[str]:
  return sorted({t.name for m in mixture_names for t in seqio.get_mixture_or_task(m).tasks})


def _first(task_name: str, split: str = "validation") -> dict:
  task = seqio.get_mixture_or_task(task_name)
  return next(task.get_dataset(None, split=split, shuffle=False, seed=0).as_numpy_iterator())


def test_registration_is_fast_and_reads_no_records(library):
  print(f"registration took {library['seconds']:.3f}s")
  assert library["seconds"] < 5.0  # about 0.1 s here; the budget is 2 s
  if library["fresh"]:
    assert library["reads_at_registration"] == 0


def test_each_collection_registers_its_datasets(library):
  found = library["mixtures"]
  files = t0.template_files(DATA_DIR)
  assert len(files) == 294
  usable = [stem for stem, _, size in files if size and t0.dataset_of(stem) != "trec"]
  assert len(_tasks(found["t0"])) == len(usable) == 276  # TREC's 18 files carry no labels
  assert len(found["t0"]) == 36 and "t0" in seqio.MixtureRegistry.names()
  assert len(found["instruction_induction"]) == 24
  assert sorted(found["cot"]) == sorted(f"cot_{d}" for d in cot.DATASETS) and len(found["cot"]) == 7
  assert found["instruct"] == ["alpaca", "lima"]
  names = [n for group in found.values() for n in group] + _tasks(sum(found.values(), []))
  assert len(names) == len(set(names))
  assert all(re.fullmatch(r"[\w\d\.\:_#]+", n) for n in names)


def test_t0_dataset_mixtures_group_a_datasets_templates(library):
  ag_news = _tasks(["t0_ag_news"])
  assert len(ag_news) == 7 and all(t.startswith("t0_ag_news_") for t in ag_news)
  self_rc = _tasks(["t0_duorc_SelfRC"])
  assert len(self_rc) == 9 and not any("ParaphraseRC" in t for t in self_rc)
  assert {clusters.cluster_of(t) for t in ag_news} == {"topic_classification"}
  assert {clusters.cluster_of(t) for t in _tasks(["t0_adversarial_qa_dbert"])} == {"extractive_qa"}
  assert t0.dataset_of("adversarial_qa_dbidaf_based_on") == "adversarial_qa_dbidaf"
  assert t0.dataset_of("not_a_p3_dataset_prompt") is None


def test_t0_mixture_caps_each_dataset_not_each_template(library):
  ag_news = _tasks(["t0_ag_news"])
  rate = t0.dataset_capped_rate(ag_news, cap=100)
  assert sum(rate(seqio.get_mixture_or_task(t)) for t in ag_news) == pytest.approx(100)
  rates = mixtures.normalized_rates(seqio.get_mixture_or_task("t0"))
  assert len(rates) == 276 and sum(rates.values()) == pytest.approx(1)


def test_splits_hold_out_every_twentieth_record():
  assert common.every_nth_split(list(range(45)), "validation") == [19, 39]
  assert len(common.every_nth_split(list(range(45)), "train")) == 43
  assert common.every_nth_split(list(range(8)), "validation") == [7]  # small files keep one


def test_every_task_renders_a_validation_example(library):
  for name in _tasks(sum(library["mixtures"].values(), [])):
    rendered = seqio.get_mixture_or_task(name).source.render("validation", 0, seed=0)
    assert rendered["inputs"].strip() and rendered["targets"].strip(), name
    assert clusters.cluster_of(name), name


@pytest.mark.parametrize("task_name", ["t0_ag_news_classify_zs_noopt", "ii_antonyms_fs_noopt",
                                       "ii_sentiment_zs_opt", "cot_creak_cot", "lima_zs_noopt"])
def test_examples_come_through_the_seqio_pipeline(library, task_name):
  example = _first(task_name)
  assert example["inputs_pretokenized"] and example["targets_pretokenized"]
  assert example["inputs"][-1] == 1 and example["targets"][-1] == 1  # EOS


def test_cot_targets_reason_then_answer(library):
  for dataset in cot.DATASETS:
    path = os.path.join(DATA_DIR, cot.SUBDIR, f"{dataset}_train.tsv")
    record = cot._loader(path)("validation")[0]
    render = lambda variant: seqio.get_mixture_or_task(f"cot_{dataset}_{variant}").source.render(
        "validation", 0, seed=0)
    target = render("cot")["targets"]
    assert "So the answer is" in target and extract_answer(target) == record["answer"]
    assert render("zs_noopt")["targets"] == record["answer"] and "\\n" not in record["question"]
  assert len(cot.cot_templates("x")) >= 5 and len(cot.direct_templates("x")) >= 5
  assert clusters.cluster_of("cot_gsm8k_cot") == "arithmetic_cot"
  assert clusters.cluster_of("cot_ecqa_cot") == "cot"


def test_instruction_induction_validates_on_execute_with_all_references(library):
  task = seqio.get_mixture_or_task("ii_translation_en_de_zs_noopt")
  assert task.num_input_examples("validation") == 100  # execute/
  assert task.num_input_examples("train") == 2808  # induce/
  example = _first("ii_translation_en_de_zs_noopt")
  references = example["references"].decode().split(REFERENCE_SEPARATOR)
  assert len(references) > 1 and example["targets_pretokenized"].decode() in references
  assert len(instruction_induction.TEMPLATES) >= 5
  assert clusters.cluster_of("ii_translation_en_de_zs_noopt") == "translation"
  assert clusters.cluster_of("ii_cause_and_effect_zs_noopt") == "causal_reasoning"


def test_instruct_prompts_show_input_and_history_only_when_present(library):
  alpaca = instruct.read_alpaca(os.path.join(DATA_DIR, instruct.ALPACA))
  with_input = next(r for r in alpaca if r["input_block"])
  without = next(r for r in alpaca if not r["input_block"])
  for template in instruct.TEMPLATES:
    assert "Input:" in template.render(with_input)[0]
    assert "Input:" not in template.render(without)[0]
  lima = instruct.read_lima(os.path.join(DATA_DIR, instruct.LIMA))
  turns = next(r for r in lima if r["history_block"])
  prompt = instruct.TEMPLATES[0].render(turns)[0]
  assert prompt.startswith("Conversation so far:\n\nUser: ")
  assert prompt.endswith(turns["instruction"])
  assert {clusters.cluster_of(t) for t in _tasks(["alpaca", "lima"])} == {"open_ended"}
  assert set(_tasks(["alpaca"])) == {"alpaca_zs_noopt", "alpaca_fs_noopt"}


def _has_options(task: seqio.Task) -> bool:
  # The spec is not kept on the task; its source holds the options (None: free-form).
  return task.source._options is not None  # pylint: disable=protected-access


def test_every_library_task_declares_the_metric_of_its_kind(library):
  mixtures_of = register_library(DATA_DIR)  # the real entry point: every submodule
  tasks_of = {module: [seqio.get_mixture_or_task(t) for t in _tasks(mixtures)]
              for module, mixtures in mixtures_of.items()}
  assert tasks_of["t0"] and tasks_of["natural_instructions"]
  for module, tasks in tasks_of.items():
    for task in tasks:
      declared = task.predict_metric_fns
      assert declared, task.name
      if _has_options(task):  # scored by rank classification
        assert metrics.accuracy in declared, task.name
      elif module in ("t0", "natural_instructions"):
        assert metrics.rouge_l in declared, task.name
  names = lambda task: [f.__name__ for f in seqio.get_mixture_or_task(task).predict_metric_fns]
  assert names("t0_adversarial_qa_dbert_based_on_zs_noopt") == [
      "rouge_l", "normalized_exact_match", "token_f1"]
  assert names("ni_task305_jeopardy_answer_generation_normal_zs_noopt") == [
      "rouge_l", "normalized_exact_match"]
  assert names("cot_creak_cot") == names("cot_creak_zs_noopt") == ["cot_exact_match"]
  assert names("cot_gsm8k_cot") == ["cot_exact_match", "numeric_match"]
  assert names("lima_zs_noopt") == names("alpaca_fs_noopt") == ["rouge_l"]
  assert names("ii_antonyms_zs_noopt") == ["normalized_exact_match"]
  assert names("ii_negation_zs_noopt") == ["normalized_exact_match", "rouge_l"]
  assert names("ii_sentiment_zs_opt") == names("rte_zs_noopt") == ["accuracy"]

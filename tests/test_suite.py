"""The benchmark suite on a real tiny model (stories260K) and a small copy of the real
benchmark files: members picked, missing data skipped with one line, an interrupted
suite resumed, the averages by hand, HumanEval's programs executed."""

import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import registrations

from flan_jax import suite, suite_members
from flan_jax.data import vocabularies
from flan_jax.evaluation import code_execution, humaneval, suite_report
from flan_jax.evaluation.evaluator import EvalConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
STORIES = DATA / "models" / "stories260K-hf"
pytestmark = pytest.mark.skipif(not (STORIES.is_dir() and (DATA / "eval" / "mmlu").is_dir()),
                                reason="needs ../shared/data (stories260K-hf, MMLU, BBH, GSM8K)")

MMLU_SUBJECTS = ("abstract_algebra", "world_religions")
BBH_TASKS = ("boolean_expressions", "date_understanding")
ROWS = 3  # test rows kept per file: the whole (small) benchmark runs
LENGTHS = {"mmlu": {"inputs": 448, "targets": 4}, "bbh": {"inputs": 448, "targets": 8},
           "gsm8k": {"inputs": 448, "targets": 16}, "tydiqa": {"inputs": 256, "targets": 8},
           "humaneval": {"inputs": 448, "targets": 24}}
MEMBERS = ["mmlu", "bbh", "gsm8k", "tydiqa", "humaneval"]
EVALUATION = EvalConfig(max_examples_per_task=None, batch_size=4)
BENCHMARK_PREFIXES = ("mmlu_", "bbh_", "gsm8k", "tydiqa", "mgsm")


def _small_data(root: pathlib.Path) -> pathlib.Path:
  """The real files, their test sets cut to ROWS records; no TyDiQA, no MGSM."""
  for subject in MMLU_SUBJECTS:
    for folder in ("dev", "test"):
      text = (DATA / "eval" / "mmlu" / folder / f"{subject}_{folder}.csv").read_text()
      lines = text.splitlines(keepends=True)
      (root / "eval" / "mmlu" / folder).mkdir(parents=True, exist_ok=True)
      (root / "eval" / "mmlu" / folder / f"{subject}_{folder}.csv").write_text(
          "".join(lines[:1 + ROWS]) if folder == "test" else text)
  for folder in ("bbh", "cot-prompts"):
    (root / "eval" / "bbh" / folder).mkdir(parents=True)
  for task in BBH_TASKS:
    examples = json.loads((DATA / "eval" / "bbh" / "bbh" / f"{task}.json").read_text())
    (root / "eval" / "bbh" / "bbh" / f"{task}.json").write_text(
        json.dumps({"examples": examples["examples"][:ROWS]}))
    (root / "eval" / "bbh" / "cot-prompts" / f"{task}.txt").write_text(
        (DATA / "eval" / "bbh" / "cot-prompts" / f"{task}.txt").read_text())
  (root / "eval" / "gsm8k").mkdir(parents=True)
  lines = (DATA / "eval" / "gsm8k" / "test.jsonl").read_text().splitlines(keepends=True)
  (root / "eval" / "gsm8k" / "test.jsonl").write_text("".join(lines[:ROWS]))
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The small data, registered in this process; everything registered is removed after
  the module, so no other test sees these tasks or their vocabulary."""
  from flan_jax_tasks import library
  # Another test in this process may have registered the real library, benchmarks
  # included, under the same names: those go for this module, and the process's
  # registrations come back exactly afterwards.
  with registrations.restored_afterwards():
    for registry in registrations.REGISTRIES:
      for name in list(registry.names()):
        if name.startswith(BENCHMARK_PREFIXES):
          registry.remove(name)
    library._registered.clear()
    yield str(_small_data(tmp_path_factory.mktemp("data")))


def _run(data_dir, output_dir, members=MEMBERS, **settings):
  return suite.run_suite(str(STORIES), str(output_dir), LENGTHS, members=members,
                         evaluation=EVALUATION, data_dir=data_dir,
                         member_settings={"humaneval": {"config": humaneval.HumanEvalConfig()}},
                         **settings)


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """One uninterrupted run: (suite.json, its output directory, its log, stdout+stderr)."""
  output = tmp_path_factory.mktemp("straight")
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("flan_jax.suite").addHandler(handler)
  try:
    with pytest.MonkeyPatch.context() as patch:
      # HumanEval's first two problems: a quick run, as max_examples_per_task makes one.
      real = humaneval.evaluate
      patch.setattr(humaneval, "evaluate",
                    lambda *a, **k: real(*a, **{**k, "max_problems": 2}))
      report = _run(data_dir, output)
  finally:
    logging.getLogger("flan_jax.suite").removeHandler(handler)
  return report, output, [r.getMessage() for r in records]


def test_the_suite_writes_the_papers_table_and_skips_missing_data_with_one_line(
    straight, data_dir):
  report, output, log = straight
  assert sorted(report["members"]) == ["bbh", "gsm8k", "humaneval", "mmlu"]
  assert list(report["skipped"]) == ["tydiqa"]
  skip_lines = [line for line in log if "tydiqa" in line]
  assert len(skip_lines) == 1 and os.path.join(data_dir, "eval", "tydiqa") in skip_lines[0]
  written = json.loads((output / "eval" / "suite.json").read_text())
  assert written == json.loads(json.dumps(report))
  assert (output / "eval" / "suite.png").read_bytes()[:4] == b"\x89PNG"
  assert report["style"] == "lm_eval"
  assert report["members"]["mmlu"]["scoring"]["mmlu_5shot"]["option_scoring"]["continuation"]


def test_member_scores_are_lm_evals_size_weighted_means(straight, data_dir):
  from flan_jax_tasks.library import bbh, mmlu
  report, output, _ = straight
  mmlu_record = json.loads((output / "eval" / "suite" / "mmlu.json").read_text())
  assert len(mmlu_record["results"]) == 2 * len(MMLU_SUBJECTS)  # accuracy, majority baseline
  assert report["members"]["mmlu"]["value"] == pytest.approx(
      mmlu.question_weighted_mean(mmlu_record["results"], data_dir))
  bbh_record = json.loads((output / "eval" / "suite" / "bbh.json").read_text())
  assert report["members"]["bbh"]["value"] == pytest.approx(
      bbh.example_weighted_mean(bbh_record["results"], data_dir, variant="zs_noopt"))
  # Random guessing on these BBH questions: True/False (1/2) and six dates (1/6), 3 each.
  assert report["members"]["bbh"]["metrics"]["random_baseline"] == pytest.approx(
      100 * (3 / 2 + 3 / 6) / 6)
  assert report["members"]["mmlu"]["metrics"]["examples"] == ROWS * len(MMLU_SUBJECTS)


def test_the_averages_by_hand(straight):
  report, _, _ = straight
  values = {name: entry["value"] for name, entry in report["members"].items()}
  assert report["average"] == pytest.approx(sum(values.values()) / 4)
  # FLAN-T5's normalized average over the members of its six that ran: MMLU and BBH.
  bbh_random = report["members"]["bbh"]["metrics"]["random_baseline"]
  by_hand = ((values["mmlu"] - 25) / 75 * 100 + (values["bbh"] - bbh_random)
             / (100 - bbh_random) * 100) / 2
  assert report["normalized_average"] == pytest.approx(by_hand)
  assert report["normalized_average_members"] == ["bbh", "mmlu"]
  assert suite_report.normalized_average({"a": (40.0, 25.0), "b": (30.0, 10.0), "c": (20.0, 0.0)}
                                         ) == pytest.approx((20 + 200 / 9 + 20) / 3)


def test_humaneval_runs_every_generated_program(straight):
  report, output, _ = straight
  metrics = report["members"]["humaneval"]["metrics"]
  assert metrics["problems"] == 2 and metrics["executed"] == 2
  assert 0 <= metrics["pass@1"] <= 100


def test_an_interrupted_suite_resumes_its_finished_members(straight, data_dir, tmp_path, caplog):
  report, _, _ = straight
  calls = []
  counted = {name: dataclasses.replace(
      member, evaluate=lambda context, m=member: calls.append(m.name) or m.evaluate(context))
      for name, member in suite_members.MEMBERS.items()}

  def interrupted(context):
    raise KeyboardInterrupt

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(humaneval, "evaluate",
                  lambda *a, real=humaneval.evaluate, **k: real(*a, **{**k, "max_problems": 2}))
    patch.setattr(suite_members, "MEMBERS", {**counted, "gsm8k": dataclasses.replace(
        counted["gsm8k"], evaluate=interrupted)})
    patch.setattr(suite, "MEMBERS", suite_members.MEMBERS)
    with pytest.raises(KeyboardInterrupt):
      _run(data_dir, tmp_path)
    assert calls == ["mmlu", "bbh"]
    assert sorted(p.name for p in (tmp_path / "eval" / "suite").iterdir()) == ["bbh.json",
                                                                               "mmlu.json"]
    patch.setattr(suite_members, "MEMBERS", counted)
    patch.setattr(suite, "MEMBERS", counted)
    calls.clear()
    resumed = _run(data_dir, tmp_path)
    assert calls == ["gsm8k", "humaneval"]  # mmlu and bbh read back
    assert resumed == report
    # Other settings evaluate again, and the log says what changed.
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="flan_jax.suite"):
      suite.run_suite(str(STORIES), str(tmp_path), LENGTHS, members=["gsm8k"],
                      evaluation=dataclasses.replace(EVALUATION, max_examples_per_task=2),
                      data_dir=data_dir)
    assert calls == ["gsm8k"]
    assert any("other settings (evaluation differ)" in r.getMessage() for r in caplog.records)


def test_an_adapter_beside_the_base_is_another_model_not_the_bases_finished_results(
    straight, data_dir, tmp_path):
  import jax
  import numpy as np
  from flan_jax import model_dir
  from flan_jax.models import convert, lora, peft_io
  from flan_jax.models.lora import LoraConfig
  _, output, _ = straight
  # A PEFT adapter for stories260K whose B factors are not zero: it changes the model.
  config, _ = convert.load_hf(str(STORIES))
  config = dataclasses.replace(config, lora=LoraConfig(rank=2, target_modules=("q", "v")))
  adapters = jax.tree.map(lambda x: np.full(x.shape, 0.05, np.float32),
                          peft_io.abstract_adapters(config))
  peft_io.save_peft(adapters, config, str(tmp_path / "adapter"))
  shutil.copytree(output, tmp_path / "out")  # the base's finished members
  report = suite.run_suite(model_dir.resolve(str(STORIES), adapter=str(tmp_path / "adapter")),
                           str(tmp_path / "out"), LENGTHS, members=["mmlu"],
                           evaluation=EVALUATION, data_dir=data_dir)
  assert report["adapter"] == str(tmp_path / "adapter")
  record = json.loads((tmp_path / "out" / "eval" / "suite" / "mmlu.json").read_text())
  assert record["settings"]["adapter"] == str(tmp_path / "adapter")  # evaluated afresh
  assert lora.has_adapters(adapters)


def test_humaneval_pass_at_k_executes_each_sample(tmp_path):
  problems = list(code_execution.read_problems().values())[:3]
  path = tmp_path / "problems.jsonl"
  path.write_text("".join(json.dumps(p) + "\n" for p in problems))
  solution = {p["prompt"]: p["canonical_solution"] for p in problems}
  seen = []

  def generate(prompts, seed):
    # The first problem always solved, the second every other sample, the third never;
    # each completion followed by more code the stop sequences must cut.
    outputs = []
    for prompt in prompts:
      seen.append(prompt)
      index = [p["prompt"] for p in problems].index(prompt)
      right = index == 0 or (index == 1 and len(seen) % 2 == 0)
      outputs.append((solution[prompt] if right else "    return None\n")
                     + "\ndef unrelated():\n    raise SystemExit(1)\n")
    return outputs

  config = humaneval.HumanEvalConfig(samples_per_problem=4, temperature=0.8, k=(1, 2),
                                     problems_path=str(path))
  metrics, results = humaneval.evaluate(generate, config, batch_size=3)
  assert metrics["executed"] == 12 and metrics["problems"] == 3 and len(seen) == 12
  passed = {p["task_id"]: sum(r["passed"] for r in results if r["task_id"] == p["task_id"])
            for p in problems}
  assert list(passed.values()) == [4, 2, 0]
  by_hand = lambda k: 100 * sum(1 - math.comb(4 - c, k) / math.comb(4, k)
                                for c in passed.values()) / 3
  assert metrics["pass@1"] == pytest.approx(by_hand(1)) == pytest.approx(50.0)
  assert metrics["pass@2"] == pytest.approx(by_hand(2))
  assert all("unrelated" not in r["completion"] for r in results)
  with pytest.raises(Exception, match="set a temperature"):
    humaneval.HumanEvalConfig(samples_per_problem=2)


def test_one_command_runs_the_picked_members_with_progress_bars(data_dir, tmp_path):
  completed = subprocess.run(
      [sys.executable, "-m", "flan_jax.eval", "--gin_file=gin/suite.gin",
       f"--gin.CHECKPOINT_PATH={STORIES}", f"--gin.OUTPUT_DIR={tmp_path}",
       f"--gin.DATA_DIR={data_dir}", "--gin.SUITE=['gsm8k', 'mgsm']",
       "--gin.EvalConfig.max_examples_per_task=2", "--gin.EvalConfig.batch_size=2",
       f"--gin.SuiteConfig.task_feature_lengths={LENGTHS}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  report = json.loads((tmp_path / "eval" / "suite.json").read_text())
  assert list(report["members"]) == ["gsm8k"] and list(report["skipped"]) == ["mgsm"]
  assert report["members"]["gsm8k"]["metrics"]["examples"] == 2
  assert "suite: 100%" in completed.stderr  # the bar over members
  assert "evaluating 1 tasks" in completed.stderr  # and the evaluation's own
  assert "GSM8K" in completed.stdout and "Norm. avg." in completed.stdout


def test_an_unknown_member_or_style_is_one_clear_error():
  from flan_jax.errors import UserError
  with pytest.raises(UserError, match="did you mean 'gsm8k'"):
    suite.check_members(["mmlu", "gsm8kk"])
  with pytest.raises(UserError, match="style 'helm'"):
    suite.run_suite(str(STORIES), "/tmp/unused", LENGTHS, members=["mmlu"], style="helm")


def test_code_completions_keep_their_indentation_when_decoded_after_the_prompt():
  from flan_jax import inference
  vocabulary = vocabularies.vocabulary_from_path(str(STORIES / "tokenizer.model"))
  problem = next(iter(code_execution.read_problems().values()))
  completion = problem["canonical_solution"]
  prompt_ids = vocabulary.encode(problem["prompt"])
  whole = vocabulary.encode(problem["prompt"] + completion)
  assert whole[:len(prompt_ids)] == prompt_ids
  generated = [*whole[len(prompt_ids):], vocabulary.eos_id, 7]
  # open-instruct's reference: decode prompt and completion together, slice the prompt off.
  reference = vocabulary.decode(whole)[len(vocabulary.decode(prompt_ids)):]
  assert inference.decode_continuation(vocabulary, prompt_ids[-1], generated) == reference
  assert reference.startswith("    ")
  assert not vocabulary.decode(whole[len(prompt_ids):]).startswith("    ")  # alone, one lost


def test_the_flan_style_runs_the_flan_variants_where_a_benchmark_has_them():
  def context(style):
    return suite_members.SuiteContext(None, None, style, LENGTHS["mmlu"], EVALUATION, {})
  assert [context("lm_eval").mixture(m) for m in ("mmlu_5shot", "bbh_cot", "gsm8k")] == [
      "mmlu_5shot", "bbh_cot", "gsm8k"]
  assert [context("flan").mixture(m) for m in ("mmlu_5shot", "bbh_cot", "gsm8k", "mgsm")] == [
      "mmlu_5shot_flan", "bbh_cot_flan", "gsm8k_flan", "mgsm"]


def test_humaneval_completions_are_transformers_greedy_continuations(straight):
  """The member prompts and decodes as open-instruct does with transformers: BOS and the
  problem's prompt, greedy, the decoded whole less the decoded prompt, cut at the stops."""
  import torch
  import transformers
  _, output, _ = straight
  samples = json.loads((output / "eval" / "suite" / "humaneval.json").read_text())[
      "details"]["samples"]
  problems = code_execution.read_problems()
  vocabulary = vocabularies.vocabulary_from_path(str(STORIES / "tokenizer.model"))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32)
  assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
  for sample in samples:
    prompt_ids = [1, *vocabulary.encode(problems[sample["task_id"]]["prompt"])]
    with torch.no_grad():
      ids = model.generate(torch.tensor([prompt_ids]), max_new_tokens=LENGTHS["humaneval"]["targets"],
                           do_sample=False, eos_token_id=2, pad_token_id=0)[0].tolist()
    text = vocabulary.decode(ids[1:])[len(vocabulary.decode(prompt_ids[1:])):]
    assert sample["completion"] == humaneval.cut_at_stop_sequences(text)


def test_members_talk_to_the_loaded_model_as_infer_does(tmp_path):
  """`context.predictor()` and `predictor(chat=True)` share the parameters the suite
  loaded, and answer as `inference.load_predictor` (which loads them afresh) does."""
  from flan_jax import checkpoint_eval, inference, model_dir
  from flan_jax.data import chat_templates
  from flan_jax.errors import UserError
  vocabulary = vocabularies.vocabulary_from_path(str(STORIES / "tokenizer.model"))
  lengths = {"inputs": 64, "targets": 12}
  # A copy of the model that records a chat template, as a finetuning run does.
  chat_dir = tmp_path / "stories_chat"
  chat_dir.mkdir()
  for path in STORIES.iterdir():
    (chat_dir / path.name).symlink_to(path)
  (chat_dir / model_dir.TEMPLATE_FILE).write_text(chat_templates.builtin("zephyr").to_json())
  loaded = checkpoint_eval.load_model(model_dir.resolve(str(chat_dir)), vocabulary, lengths)
  context = suite_members.SuiteContext(loaded, None, "lm_eval", lengths, EVALUATION, {})
  fresh = inference.load_predictor(str(chat_dir), max_input_length=64, max_new_tokens=12)
  assert context.predictor().generate(["Once upon a time"]) == fresh.generate(
      ["Once upon a time"])
  conversation = [[{"role": "user", "content": "Tell me a story."}]]
  fresh = inference.load_predictor(str(chat_dir), chat=True, max_input_length=64,
                                   max_new_tokens=12)
  assert context.predictor(chat=True).chat(conversation) == fresh.chat(conversation)
  # The model without a recorded template: one clear error.
  context.model = dataclasses.replace(loaded, checkpoint=model_dir.resolve(str(STORIES)))
  with pytest.raises(UserError, match="talks to the model as a chat"):
    context.predictor(chat=True)

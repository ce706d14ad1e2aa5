"""flan_jax as an lm-eval model gives lm-eval's Hugging Face backend's numbers.

The reference is lm-eval 0.4's own `hf` model (HFLM: transformers, float32, CPU) on the
same checkpoint (stories260K) and the same tasks: MMLU anatomy (lm-eval's `mmlu`
template), a HellaSwag-style task (context + 4 endings, acc and acc_norm) and
`gsm8k_cot` (8-shot chain of thought, generated until "Q:"). Tasks read local files
(lm-eval's configs download from the hub): the built-in configs are included and only
their data files are replaced.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny import TINY_DECODER, simulated_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES), reason=f"no real data at {DATA}")

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model needs it


def _lm_eval_tasks_dir() -> str:
  return os.path.join(os.path.dirname(lm_eval.__file__), "tasks")


def _write_tasks(directory) -> str:
  """Task YAMLs over local files: MMLU anatomy and gsm8k_cot as lm-eval configures them
  (its own YAMLs included), and a HellaSwag-style task built from GSM8K sentences."""
  directory.mkdir(exist_ok=True)
  mmlu = directory / "mmlu_anatomy_test.jsonl"
  with open(os.path.join(DATA, "eval", "mmlu", "test", "anatomy_test.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))[:12]
  mmlu.write_text("".join(json.dumps({"question": r["question"],
                                      "choices": [r[f"choice{k}"] for k in range(4)],
                                      "answer": int(r["answer"])}) + "\n" for r in rows))
  template = os.path.join(_lm_eval_tasks_dir(), "mmlu", "default", "_default_template_yaml")
  (directory / "mmlu_anatomy_local.yaml").write_text(
      f"include: {template}\ntask: mmlu_anatomy_local\ndataset_path: json\ndataset_name: null\n"
      f"dataset_kwargs:\n  data_files:\n    test: {mmlu}\n"
      'description: "The following are multiple choice questions (with answers) about '
      'anatomy.\\n\\n"\nfewshot_split: null\n')

  # HellaSwag-style: a story's first sentence, its true next sentence among 3 taken
  # from other stories.
  with open(os.path.join(DATA, "eval", "gsm8k", "test.jsonl"), encoding="utf-8") as f:
    questions = [json.loads(line)["question"] for line in f][:40]
  split = [q.split(". ") for q in questions if q.count(". ") >= 1]
  docs = []
  for i in range(10):
    endings = [" " + split[(i + k) % len(split)][1] for k in range(4)]
    label = i % 4
    endings[0], endings[label] = endings[label], endings[0]
    docs.append({"query": split[i][0] + ".", "choices": endings, "label": label})
  hellaswag = directory / "hellaswag_style.jsonl"
  hellaswag.write_text("".join(json.dumps(d) + "\n" for d in docs))
  (directory / "hellaswag_style_local.yaml").write_text(
      "task: hellaswag_style_local\ndataset_path: json\ndataset_name: null\n"
      f"dataset_kwargs:\n  data_files:\n    validation: {hellaswag}\n"
      "output_type: multiple_choice\nvalidation_split: validation\ntest_split: null\n"
      'doc_to_text: "{{query}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "choices"\n'
      "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
      "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")

  gsm8k_cot = os.path.join(_lm_eval_tasks_dir(), "gsm8k", "gsm8k-cot.yaml")
  gsm8k = os.path.join(DATA, "eval", "gsm8k", "test.jsonl")
  (directory / "gsm8k_cot_local.yaml").write_text(
      f"include: {gsm8k_cot}\ntask: gsm8k_cot_local\ndataset_path: json\ndataset_name: null\n"
      f"dataset_kwargs:\n  data_files:\n    test: {gsm8k}\ntag: null\n")
  return str(directory)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
  return _write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def task_manager(tasks_dir):
  from lm_eval.tasks import TaskManager
  # lm-eval's own task table is not indexed (9 s): the YAMLs include its files by path.
  return TaskManager(include_defaults=False, include_path=tasks_dir)


@pytest.fixture(scope="module")
def models():
  import flan_jax.lm_eval as flan_jax_lm_eval
  from lm_eval.models.huggingface import HFLM
  ours = flan_jax_lm_eval.load(STORIES, batch_size=8)
  reference = HFLM(pretrained=STORIES, device="cpu", dtype="float32", batch_size=8)
  return ours, reference


def _evaluate(model, task_manager, tasks, **settings):
  return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=task_manager,
                                 log_samples=True, bootstrap_iters=0, **settings)


def _responses(results, task):
  """Each request's raw answer, in lm-eval's order (document, then request)."""
  samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
  return [response for s in samples for response in s["resps"]], samples


def test_multiple_choice_log_likelihoods_greedy_flags_and_accuracy_equal_hfs(models,
                                                                            task_manager):
  ours, reference = models
  tasks = ["mmlu_anatomy_local", "hellaswag_style_local"]
  mine = _evaluate(ours, task_manager, tasks)
  theirs = _evaluate(reference, task_manager, tasks)
  for task in tasks:
    (got, _), (expected, _) = _responses(mine, task), _responses(theirs, task)
    assert len(got) == len(expected) >= 40
    for [(value, greedy)], [(want, want_greedy)] in zip(got, expected):
      assert value == pytest.approx(want, abs=1e-4)
      assert greedy == want_greedy
    for metric in ("acc,none", "acc_norm,none"):
      if metric in theirs["results"][task]:
        assert mine["results"][task][metric] == theirs["results"][task][metric]
  # Some continuations are the model's greedy choice, so is_greedy is tested both ways.
  flags = [g for [(_, g)] in _responses(mine, "hellaswag_style_local")[0]
           + _responses(mine, "mmlu_anatomy_local")[0]]
  assert any(flags) and not all(flags)


def test_gsm8k_cot_generations_and_exact_match_equal_hfs(models, task_manager):
  ours, reference = models
  settings = dict(limit=2, gen_kwargs={"max_gen_toks": 16})
  mine = _evaluate(ours, task_manager, ["gsm8k_cot_local"], **settings)
  theirs = _evaluate(reference, task_manager, ["gsm8k_cot_local"], **settings)
  (got, _), (expected, _) = (_responses(mine, "gsm8k_cot_local"),
                             _responses(theirs, "gsm8k_cot_local"))
  assert len(got) == 2 * 2 and got == expected  # one sample per document and filter
  assert any(text[0].strip() for text in got)  # not all empty: there is text to compare
  assert mine["results"]["gsm8k_cot_local"] == theirs["results"]["gsm8k_cot_local"]


def test_rolling_log_likelihood_over_several_windows_equals_hfs(models):
  from lm_eval.api.instance import Instance
  ours, reference = models
  texts = ["Once upon a time there was a little dog named Spot. " * 80, "Hi", ""]
  requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
  assert len(ours.tok_encode(texts[0])) > 2 * ours.max_length  # three windows
  got = ours.loglikelihood_rolling(requests, disable_tqdm=True)
  expected = reference.loglikelihood_rolling(requests, disable_tqdm=True)
  assert got == pytest.approx(expected, abs=1e-4, rel=1e-6)
  assert got[2] == 0.0


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_a_byte_level_model_of_our_own_scores_each_request_as_its_own_row(prefix_lm):
  """Several requests packed in a row score as each alone: [BOS 0] + context read (all
  at once by a prefix-LM), the continuation's log-probabilities summed by hand."""
  import dataclasses
  import jax
  from lm_eval.api.instance import Instance
  from flan_jax.data import vocabularies
  from flan_jax.evaluation.harness import FlanJaxLM
  from flan_jax.models.families import family_for
  network = family_for(dataclasses.replace(TINY_DECODER, prefix_lm=prefix_lm))
  params = network.init(jax.random.key(0), {"inputs": 8, "targets": 8})["params"]
  vocabulary = vocabularies.byte_vocabulary()
  ours = FlanJaxLM(network, params, vocabulary, max_length=64, add_bos_token=True, batch_size=2)
  pairs = [("2 + 3 =", " 5"), ("abc", "d"), ("", "hello"), ("x" * 80, " yz")]
  got = ours.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                           disable_tqdm=True)
  for (context, continuation), (value, greedy) in zip(pairs, got):
    context_ids = [0, *vocabulary.encode(context)] if context else [0]
    continuation_ids = list(vocabulary.encode(continuation))
    row = (context_ids + continuation_ids)[-65:]  # lm-eval's cut: max_length + 1 tokens
    read, n_context = np.array([row[:-1]]), len(row) - len(continuation_ids)
    prefix = (np.arange(len(row) - 1) < n_context).astype(np.int32)[None]
    logits = network.logits(params, {"decoder_input_tokens": read,
                                     "decoder_causal_attention": prefix})[0]
    log_probs = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), -1))
    positions = range(n_context - 1, len(row) - 1)
    assert value == pytest.approx(sum(log_probs[p, row[p + 1]] for p in positions), abs=1e-4)
    assert greedy == all(np.argmax(log_probs[p]) == row[p + 1] for p in positions)


def test_requests_are_packed_where_they_fit_best():
  from flan_jax.evaluation.harness import best_fit_rows
  # Longest first: 7 opens a row, 6 another; 3 fits beside 6 (room 4) better than
  # beside 7 (room 3 is exact, so there); 2 then goes beside 6.
  sized = [(0, 7), (1, 6), (2, 3), (3, 2), (4, 1)]
  assert best_fit_rows(sized, 10) == [[0, 2], [1, 3, 4]]
  assert best_fit_rows([(0, 10), (1, 10)], 10) == [[0], [1]]


def test_bos_default_is_transformers_rule(tmp_path):
  import shutil
  import transformers
  from flan_jax.data import hf_tokenizer

  def transformers_adds_bos(directory) -> bool:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    return tokenizer("Hi there")["input_ids"][0] == 1  # stories260K's <s>

  plain = tmp_path / "plain"
  shutil.copytree(STORIES, plain)
  configured = tmp_path / "configured"
  shutil.copytree(STORIES, configured)
  (configured / "tokenizer_config.json").write_text('{"add_bos_token": true}')
  saved = tmp_path / "saved"  # tokenizer.json whose post-processor adds the BOS
  transformers.AutoTokenizer.from_pretrained(str(configured)).save_pretrained(str(saved))
  (saved / "tokenizer_config.json").unlink()
  shutil.copy(os.path.join(STORIES, "config.json"), saved)
  for directory, expected in ((plain, False), (configured, True), (saved, True)):
    assert transformers_adds_bos(directory) == expected
    assert hf_tokenizer.adds_bos(str(directory), bos_id=1) == expected


def test_the_module_named_lm_eval_does_not_hide_the_harness():
  import flan_jax.lm_eval as ours
  assert os.path.dirname(lm_eval.__file__) != os.path.dirname(ours.__file__)
  assert lm_eval.api.registry.get_model("flan_jax") is ours.CheckpointLM
  assert lm_eval.api.registry.get_model("hf").__name__ == "HFLM"  # lm-eval's own still load


@pytest.mark.parametrize("model_args, message", [
    ({"pretrained": STORIES}, r"\['pretrained'\] are not flan_jax settings"),
    ({}, "needs checkpoint=DIR"),
    ({"checkpoint": "/nonexistent"}, "is not a run's MODEL_DIR, an orbax checkpoint or a "),
    ({"checkpoint": STORIES, "mesh_shape": "2,1"}, "write the .data, fsdp, tensor. sizes"),
])
def test_bad_model_args_are_one_clear_error(model_args, message):
  import flan_jax.lm_eval as ours
  from flan_jax.errors import UserError
  with pytest.raises(UserError, match=message):
    ours.from_model_args(model_args)


def test_generation_settings_map_to_decoding_strategies(models):
  ours, _ = models
  assert ours._decode_config({"do_sample": False, "temperature": 0.0}).strategy == "greedy"
  sampled = ours._decode_config({"do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                 "top_k": 5})
  assert (sampled.strategy, sampled.temperature, sampled.top_p, sampled.top_k) == (
      "sample", 0.7, 0.9, 5)
  assert ours._decode_config({"num_beams": 3}).num_beams == 3


def test_the_command_line_on_two_devices_writes_hfs_numbers(tasks_dir, task_manager, models,
                                                            tmp_path):
  output = tmp_path / "out"
  path = os.pathsep.join([REPO, os.path.join(REPO, ".pp"), os.environ.get("PYTHONPATH", "")])
  completed = subprocess.run(
      [sys.executable, "-m", "flan_jax.lm_eval", "--model_args", f"checkpoint={STORIES}",
       "mesh_shape=2x1x1", "--tasks", "hellaswag_style_local", "--include_path", tasks_dir,
       "--limit", "2", "--batch_size", "4", "--output_path", str(output), "--log_samples"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(simulated_devices_env(2), PYTHONPATH=path))
  assert completed.returncode == 0, completed.stderr[-3000:]
  written = {name.split("_")[0]: os.path.join(root, name)
             for root, _, names in os.walk(output) for name in names if name.endswith("json")
             or name.endswith(".jsonl")}
  with open(written["results"], encoding="utf-8") as f:
    results = json.load(f)
  assert results["config"]["model"] == "flan_jax"
  assert results["n-samples"]["hellaswag_style_local"]["effective"] == 2
  with open(written["samples"], encoding="utf-8") as f:
    samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
  reference = _evaluate(models[1], task_manager, ["hellaswag_style_local"], limit=2)
  expected, _ = _responses(reference, "hellaswag_style_local")
  got = [response for s in samples for response in s["resps"]]
  assert len(got) == len(expected) == 8
  for [(value, greedy)], [(want, want_greedy)] in zip(got, expected):
    # lm-eval's samples file writes each answer's parts as strings.
    assert float(value) == pytest.approx(want, abs=1e-4) and greedy == str(want_greedy)
  assert (results["results"]["hellaswag_style_local"]["acc,none"]
          == reference["results"]["hellaswag_style_local"]["acc,none"])

"""The held-out experiment's numbers: what is averaged, how data is weighted and fitted,
and that evaluation reads the same prompts every time."""

import numpy as np
import pytest
import seqio

from flan_jax.data import clusters, mixtures, packing, pipeline, truncation
from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.templates import Template, apply_templates
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.evaluation import evaluator
from flan_jax.job import report_groups
from flan_jax.metrics import accuracy, strip

VOCAB = byte_vocabulary()
EOS = VOCAB.eos_id


def _records(prefix: str, n: int = 40):
  return lambda split: [{"premise": f"{prefix} premise {i} " + "context " * 3,
                         "hypothesis": f"question {i}?", "answer": "yes" if i % 2 else "no",
                         "rationale": "r"} for i in range(n)]


@pytest.fixture(scope="module")
def registry():
  """Dataset `exp_a` (nli, 7 variants), `exp_b` (nli, one) and `exp_c` (sentiment, one)."""
  specs = [
      FlanTaskSpec(name="exp_a", cluster="exp_nli", records=_records("a"),
                   templates=(Template("{premise} {hypothesis}", "{answer}"),),
                   options=("yes", "no"), few_shot_k=3,
                   cot_templates=(Template("{premise}? {hypothesis}", "{rationale} So the answer is {answer}."),),
                   inversion_templates=(Template("Answer {answer}: {premise}", "{hypothesis}"),),
                   vocabulary=VOCAB),
      FlanTaskSpec(name="exp_b", cluster="exp_nli", records=_records("b"),
                   templates=(Template("{premise} {hypothesis}", "{answer}"),), few_shot=False,
                   vocabulary=VOCAB),
      FlanTaskSpec(name="exp_c", cluster="exp_sentiment", records=_records("c"),
                   templates=(Template("{premise} {hypothesis}", "{answer}"),), few_shot=False,
                   vocabulary=VOCAB),
  ]
  names = {spec.name: register_flan_task(spec) for spec in specs}
  yield names
  for variants in names.values():
    for task in variants.values():
      seqio.TaskRegistry.remove(task)
  for name in ("exp_a", "exp_b", "exp_c", "exp_loo_exp_nli_train", "exp_loo_exp_nli_eval",
               "exp_loo_exp_sentiment_train", "exp_loo_exp_sentiment_eval"):
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)


def _all_tasks(registry):
  return [t for variants in registry.values() for t in variants.values()]


def test_the_heldout_mean_counts_each_dataset_once_by_its_zero_shot_options_task(registry):
  _, heldout = clusters.register_leave_one_out("exp_nli", prefix="exp_loo", among=_all_tasks(registry))
  evaluated = {t.name for t in seqio.get_mixture_or_task(heldout).tasks}
  assert "exp_a_inverted" not in evaluated  # write the premise from the answer: not scorable
  assert {"exp_a_zs_opt", "exp_a_fs_noopt", "exp_a_cot", "exp_b_zs_noopt"} <= evaluated
  groups = report_groups([], sorted(evaluated))
  # exp_a by its zero-shot options task, exp_b (no options) by its zero-shot task.
  assert groups["heldout"] == ["exp_a_zs_opt", "exp_b_zs_noopt"]
  assert groups["heldout_fs_noopt"] == ["exp_a_fs_noopt"]
  assert groups["heldout_zs_noopt"] == ["exp_a_zs_noopt", "exp_b_zs_noopt"]
  assert "heldout_inverted" not in groups


def test_leave_one_out_training_weighs_datasets_not_their_variants(registry):
  train, _ = clusters.register_leave_one_out("exp_sentiment", prefix="exp_loo",
                                             among=_all_tasks(registry), overlaps={})
  rates = mixtures.normalized_rates(seqio.get_mixture_or_task(train))
  # Two datasets of 40 train records each: half the draws each, exp_a's half split over
  # its 7 variants. Weighting variants would give exp_a 7/8 of the draws.
  assert len(registry["exp_a"]) == 7
  assert rates["exp_b_zs_noopt"] == pytest.approx(0.5)
  for task in registry["exp_a"].values():
    assert rates[task] == pytest.approx(0.5 / 7)


def test_few_shot_prompts_drop_exemplars_to_fit_the_runs_input_length_and_keep_the_question(registry):
  task = seqio.get_mixture_or_task("exp_a_fs_noopt")

  def prompts(input_length):
    dataset = task.get_dataset({"inputs": input_length, "targets": 8}, split="train",
                               shuffle=False, seed=0, trim_output_features=False)
    return list(dataset.take(30).as_numpy_iterator())

  for length, most_shots in ((60, 0), (100, 1), (300, 3)):
    for example in prompts(length):
      text = example["inputs_pretokenized"].decode()
      index = text.split("premise ")[-1].split(" ")[0]
      assert text.endswith(f"question {index}?")  # the query, whole, at the end
      assert text.count("question") - 1 <= most_shots
      # It fits whenever the zero-shot prompt does (these prompts are 40-odd bytes).
      assert len(example["inputs"]) <= length
  assert any(ex["inputs_pretokenized"].decode().count("question") == 4 for ex in prompts(300))


def test_too_long_examples_lose_the_front_of_the_prompt_and_every_cut_is_counted(registry):
  lengths = {"inputs": 4, "targets": 2}
  counts = pipeline.report_truncation([seqio.get_mixture_or_task("exp_b_zs_noopt")], lengths,
                                      examples_per_task=10)
  assert counts["exp_b_zs_noopt"].inputs_cut == 10 and counts["exp_b_zs_noopt"].targets_cut == 10
  batch = next(pipeline.train_batches("exp_b_zs_noopt", lengths, 2, seed=0, pack=False))
  row = batch["decoder_target_tokens"][0]
  # The last three prompt bytes and EOS ("?" of the question and EOS), then a 2-token target
  # that keeps its first token and its EOS.
  assert VOCAB.decode(row[:3].tolist()).endswith("?")
  assert row[3] == EOS and row[5] == EOS
  assert batch["decoder_input_tokens"][0, 0] == 0  # the BOS is shifted in, never cut


def test_causal_models_see_no_eos_between_prompt_and_answer_in_training_and_evaluation():
  inputs = np.array([*VOCAB.encode("Is 4 even?"), EOS])
  targets = np.array([*VOCAB.encode("yes"), EOS])
  packer = packing.BestFitPacker({"inputs": 16, "targets": 8}, bos_id=2, eos_id=EOS,
                                 inputs_eos=False, max_examples_per_row=1)
  row = next(packer.add({"inputs": inputs, "targets": targets}))
  expected = [2, *VOCAB.encode("Is 4 even?"), *VOCAB.encode("yes")]
  assert row["decoder_input_tokens"][:len(expected)].tolist() == expected
  # Evaluation builds the prompt by the same rule: BOS + inputs without EOS.
  prompt, _ = truncation.fit_inputs(inputs, 16, eos_id=EOS, inputs_eos=False)
  padded, _, _ = evaluator.left_pad_prompts([prompt], 17, prefix=(2,))
  assert padded[0][padded[0] != 0].tolist() == expected[:len(prompt) + 1]


def _templated_task(name):
  def source(split, shuffle_files, seed=None):
    import tensorflow as tf
    return tf.data.Dataset.from_tensor_slices({"x": [str(i) for i in range(40)]})
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(source, splits=["validation"]),
      preprocessors=[apply_templates([Template(f"template {i}: {{x}}", "{x}") for i in range(8)]),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=output_features(VOCAB), postprocess_fn=strip, metric_fns=[accuracy])
  return seqio.get_mixture_or_task(name)


def test_evaluation_reads_the_same_prompts_every_time():
  task = _templated_task("exp_templated")
  try:
    config = evaluator.EvalConfig(max_examples_per_task=40)
    read = lambda: [ex["inputs_pretokenized"] for ex in
                    evaluator.read_examples(task, {"inputs": 64, "targets": 8}, config)]
    first = read()
    assert len(set(p.split(b":")[0] for p in first)) > 1  # templates vary across examples
    assert read() == first  # ... but not between evaluations
  finally:
    seqio.TaskRegistry.remove("exp_templated")


def test_options_tasks_are_scored_by_rank_classification(registry):
  task = seqio.get_mixture_or_task("exp_a_zs_opt")
  lengths = {"inputs": 128, "targets": 8}

  def score(examples):
    # A fake model that finds the first option (yes) likelier when the premise number is odd.
    from flan_jax.evaluation.scoring import ScoredOptions
    scores = []
    for pairs in examples:
      prompt = VOCAB.decode(pairs[0][0].tolist())
      odd = int(prompt.split("premise ")[1].split(" ")[0]) % 2
      scores.append([0.0, -1.0] if odd else [-1.0, 0.0])
    return ScoredOptions(scores, [[2, 2]] * len(examples))

  def generate(prompts, mask):
    raise AssertionError("options tasks are not scored by generation")

  model = evaluator.EvalModel(generate=generate, score=score, lengths=lengths)
  metrics, _ = evaluator.evaluate_task(task, model, evaluator.EvalConfig(split="validation"))
  # The model always picks right; answering the commoner label would score half.
  assert metrics == {"accuracy": 100.0, "majority_baseline": 50.0}
  # Tasks evaluated together share scoring batches; each gets what it gets alone.
  other = seqio.get_mixture_or_task("exp_a_zs_noopt")
  together = evaluator.evaluate_tasks([other, task], model, evaluator.EvalConfig(split="validation"))
  assert together[task.name][0] == metrics
  assert together[other.name][0] == evaluator.evaluate_task(
      other, model, evaluator.EvalConfig(split="validation"))[0]


def test_majority_baseline_is_always_picking_one_option_position():
  # Per-record options (the two numbers compared): "always the first" scores 3 of 4,
  # while the commonest answer string ("42") would claim a meaningless 50%.
  targets = [["42"], ["42"], ["5"], ["90"]]
  options = [["42", "17"], ["42", "7"], ["5", "8"], ["3", "90"]]
  assert evaluator.majority_baseline(targets, options) == 75.0
  # Fixed labels: the commonest label.
  assert evaluator.majority_baseline([["no"], ["no"], ["yes"]], [["yes", "no"]] * 3) == pytest.approx(200 / 3)

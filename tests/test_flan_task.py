"""One registration yields FLAN's variants; few-shot, options, CoT and clusters behave."""

import random

import pytest
import seqio

from flan_jax.data import clusters
from flan_jax.data.flan_task import FlanTaskSpec, cot_postprocessor, register_flan_task
from flan_jax.data.templates import Template
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.data.variants import OPTION_FORMATS, FewShot, extract_answer, format_options
from flan_jax.metrics import accuracy

TEMPLATES = tuple(Template(f"[{i}] Does '{{premise}}' imply '{{hypothesis}}'?", "{answer}")
                  for i in range(5))
RECORDS = {
    "train": [{"premise": f"premise {i}", "hypothesis": f"hypothesis {i}",
               "answer": "yes" if i % 2 else "no", "rationale": f"reason {i}"} for i in range(40)],
    "validation": [{"premise": f"held {i}", "hypothesis": f"claim {i}", "answer": "no",
                    "rationale": f"why {i}"} for i in range(6)],
}


@pytest.fixture(scope="module")
def toy():
  names = register_flan_task(FlanTaskSpec(
      name="flan_toy", cluster="toy_nli", records=lambda split: RECORDS[split],
      templates=TEMPLATES, options=("yes", "no"), few_shot_k=3, few_shot_token_budget=400,
      cot_templates=(Template("{premise} -> {hypothesis}? Explain.", "{rationale} So the answer is {answer}."),),
      inversion_templates=(Template("Answer '{answer}' for premise '{premise}': hypothesis?", "{hypothesis}"),)))
  yield names
  for task in names.values():
    seqio.TaskRegistry.remove(task)
  seqio.MixtureRegistry.remove("flan_toy")


def _examples(task_name, split, seed=None):
  task = seqio.get_mixture_or_task(task_name)
  return list(task.get_dataset(None, split=split, shuffle=False, seed=seed).as_numpy_iterator())


def test_one_registration_yields_every_variant_and_a_mixture(toy):
  assert set(toy) == {"zs_noopt", "zs_opt", "zs_opt_random", "fs_noopt", "fs_opt", "cot", "inverted"}
  mixture = seqio.get_mixture_or_task("flan_toy")
  assert {t.name for t in mixture.tasks} == set(toy.values())
  assert all(clusters.cluster_of(t) == "toy_nli" for t in toy.values())
  for variant, task in toy.items():
    for example in _examples(task, "validation"):
      assert example["variant"].decode() == variant  # passthrough features
      assert 0 <= example["template_idx"] < 5


def test_options_are_shown_only_in_option_variants(toy):
  fixed = [e["inputs_pretokenized"].decode() for e in _examples(toy["zs_opt"], "validation")]
  plain = [e["inputs_pretokenized"].decode() for e in _examples(toy["zs_noopt"], "validation")]
  assert all(text.endswith("OPTIONS:\n- yes\n- no") for text in fixed)
  assert not any("yes" in text for text in plain)
  randomized = {e["inputs_pretokenized"].decode().split("\n\n")[-1]
                for e in _examples(toy["zs_opt_random"], "train")}
  assert len(randomized) > 2  # several option formats drawn
  assert randomized <= {format_options(["yes", "no"], s) for s in range(len(OPTION_FORMATS))}


def test_few_shot_draws_other_train_examples_with_the_query_template(toy):
  for example in _examples(toy["fs_noopt"], "train"):
    text = example["inputs_pretokenized"].decode()
    shots = text.split("\n\n")
    query = shots[-1]
    assert len(shots) == 4  # k=3 exemplars fit the budget
    own_premise = query.split("'")[1]
    assert all(own_premise != s.split("'")[1] for s in shots[:-1])  # never the example itself
    assert all(s.startswith(f"[{example['template_idx']}]") for s in shots)


def test_few_shot_is_deterministic_for_a_seed(toy):
  first = [e["inputs_pretokenized"] for e in _examples(toy["fs_opt"], "validation", seed=1)]
  again = [e["inputs_pretokenized"] for e in _examples(toy["fs_opt"], "validation", seed=1)]
  other = [e["inputs_pretokenized"] for e in _examples(toy["fs_opt"], "validation", seed=2)]
  assert first == again and first != other


def test_few_shot_prunes_exemplars_to_the_token_budget():
  exemplars = [{"q": "x" * 10, "a": "y"} for _ in range(5)]
  render = lambda budget: FewShot("fs", (Template("{q}", "{a}"),), k=5, token_budget=budget).render(
      {"q": "query", "a": "z"}, random.Random(0), exemplars=exemplars)[0]
  # Each shot is "xxxxxxxxxx\ny" (12 tokens) and shots are joined by a blank line (2).
  assert render(12 + 2 + 12 + 2 + 5).count("x" * 10) == 2
  assert render(12 + 2 + 12 + 2 + 4).count("x" * 10) == 1
  assert render(3) == "query"  # no exemplar fits: the zero-shot prompt


def test_chain_of_thought_targets_and_answer_extraction(toy):
  example = _examples(toy["cot"], "validation")[0]
  assert example["targets_pretokenized"].decode() == "why 0 So the answer is no."
  target = cot_postprocessor(example["targets_pretokenized"].decode(), example=example, is_target=True)
  prediction = cot_postprocessor("It does not follow. So the answer is no.", example=example)
  assert accuracy([target], [prediction])["accuracy"] == 100.0
  assert extract_answer("a. The answer is: 42.") == "42"
  assert extract_answer("no rationale") == "no rationale"


def test_inversion_asks_for_the_input(toy):
  example = _examples(toy["inverted"], "validation")[0]
  assert example["targets_pretokenized"].decode() == "claim 0"
  assert "'no'" in example["inputs_pretokenized"].decode()


def test_leave_one_cluster_out_excludes_the_cluster_and_its_overlaps(toy):
  empty = seqio.FunctionDataSource(lambda split, shuffle_files: None, ["train"])
  for name, cluster in (("flan_toy_para", "toy_paraphrase"), ("flan_toy_sentiment", "toy_sentiment")):
    seqio.TaskRegistry.add(name, source=empty, preprocessors=[],
                           output_features=output_features(byte_vocabulary()))
    clusters.assign(name, cluster)
  try:
    train, evaluate = clusters.register_leave_one_out(
        "toy_nli", prefix="test_loo", overlaps={"toy_nli": ("toy_paraphrase",)},
        among=[*toy.values(), "flan_toy_para", "flan_toy_sentiment"],
        eval_filter=lambda name: name.endswith("zs_opt"))
    train_tasks = {t.name for t in seqio.get_mixture_or_task(train).tasks}
    assert "flan_toy_sentiment" in train_tasks
    assert not train_tasks & set(toy.values()) and "flan_toy_para" not in train_tasks
    assert {t.name for t in seqio.get_mixture_or_task(evaluate).tasks} == {"flan_toy_zs_opt"}
  finally:
    seqio.TaskRegistry.remove("flan_toy_para")
    seqio.TaskRegistry.remove("flan_toy_sentiment")
    for name in ("test_loo_toy_nli_train", "test_loo_toy_nli_eval"):
      if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)

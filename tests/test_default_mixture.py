"""The built-in default mixture: registered tasks, clusters, splits, held-out split."""

import seqio

import flan_jax_tasks.default_mixture as default_mixture
from flan_jax_tasks import default_generators
from flan_jax.data import mixtures


def test_every_generator_is_a_task_with_train_and_validation_and_metrics():
  assert len(default_generators.GENERATORS) >= 12
  for generator in default_generators.GENERATORS:
    task = seqio.get_mixture_or_task(default_mixture.task_name(generator))
    assert {"train", "validation"} <= set(task.splits)
    assert task.predict_metric_fns
    assert len(generator.templates) >= 3


def test_training_mixture_leaves_out_exactly_the_heldout_cluster():
  train = {t.name for t in seqio.get_mixture_or_task("default_train").tasks}
  heldout = {t.name for t in seqio.get_mixture_or_task("default_heldout").tasks}
  clusters = {g.cluster for g in default_generators.GENERATORS}
  assert len(clusters) >= 4
  assert not train & heldout
  assert heldout == set(default_mixture.tasks_in_cluster(default_mixture.HELDOUT_CLUSTER))
  assert train | heldout == {default_mixture.task_name(g) for g in default_generators.GENERATORS}
  rates = mixtures.normalized_rates(seqio.get_mixture_or_task("default_train"))
  assert set(rates) == train and abs(sum(rates.values()) - 1) < 1e-9


def test_rendered_examples_are_deterministic_and_end_in_eos():
  task = seqio.get_mixture_or_task("default_reverse_word")
  take = lambda: list(task.get_dataset(None, split="validation", shuffle=False, seed=5)
                      .take(5).as_numpy_iterator())
  first, again = take(), take()
  assert [e["inputs_pretokenized"] for e in first] == [e["inputs_pretokenized"] for e in again]
  for example in first:
    assert example["inputs"][-1] == 1 and example["targets"][-1] == 1
    word = example["targets_pretokenized"].decode()[::-1]
    assert word in example["inputs_pretokenized"].decode()

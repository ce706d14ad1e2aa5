"""The built-in default mixture: FLAN variants of generated tasks, clusters, the held-out split."""

import seqio

import flan_jax_tasks.default_mixture as default_mixture
from flan_jax_tasks import default_generators
from flan_jax.data import clusters, mixtures

VARIANTS = {"zs_noopt", "zs_opt", "zs_opt_random", "fs_noopt", "fs_opt"}


def test_every_generator_is_a_dataset_of_five_variants_with_splits_and_metrics():
  assert len(default_generators.GENERATORS) >= 12
  for generator in default_generators.GENERATORS:
    variants = seqio.get_mixture_or_task(default_mixture.task_name(generator)).tasks
    assert {clusters.variant_of(t.name) for t in variants} == VARIANTS
    for task in variants:
      assert {"train", "validation"} <= set(task.splits)
      assert task.predict_metric_fns
      assert clusters.dataset_of(task.name) == default_mixture.task_name(generator)
    assert len(generator.templates) >= 3


def test_training_mixture_leaves_out_exactly_the_heldout_cluster_and_weighs_datasets():
  train = {t.name for t in seqio.get_mixture_or_task("default_train").tasks}
  heldout = {t.name for t in seqio.get_mixture_or_task("default_heldout").tasks}
  assert len({g.cluster for g in default_generators.GENERATORS}) >= 4
  assert not train & heldout
  assert heldout == set(default_mixture.tasks_in_cluster(default_mixture.HELDOUT_CLUSTER))
  assert train | heldout == {t.name for g in default_generators.GENERATORS
                             for t in seqio.get_mixture_or_task(default_mixture.task_name(g)).tasks}
  rates = mixtures.normalized_rates(seqio.get_mixture_or_task("default_train"))
  assert set(rates) == train and abs(sum(rates.values()) - 1) < 1e-9
  # 19 datasets of equal size (capped at 3,000), five variants each.
  assert len(train) == 19 * 5
  assert all(abs(rate - 1 / 95) < 1e-12 for rate in rates.values())


def test_rendered_examples_are_deterministic_end_in_eos_and_carry_their_options():
  task = seqio.get_mixture_or_task("default_reverse_word_zs_opt")
  take = lambda: list(task.get_dataset(None, split="validation", shuffle=False, seed=5)
                      .take(5).as_numpy_iterator())
  first, again = take(), take()
  assert [e["inputs_pretokenized"] for e in first] == [e["inputs_pretokenized"] for e in again]
  for example in first:
    assert example["inputs"][-1] == 1 and example["targets"][-1] == 1
    answer = example["targets_pretokenized"].decode()
    assert answer[::-1] in example["inputs_pretokenized"].decode()
    options = example["options"].decode().split("\x1e")
    assert answer in options and "OPTIONS:" in example["inputs_pretokenized"].decode()

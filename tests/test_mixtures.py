"""Examples-proportional mixing with FLAN's per-task cap, and temperature."""

import pytest
import seqio
import tensorflow as tf

from flan_jax.data import mixtures
from flan_jax.data.vocabularies import byte_vocabulary, output_features

SIZES = {"mix_test_small": 100, "mix_test_medium": 2_000, "mix_test_large": 50_000}


@pytest.fixture(scope="module")
def tasks():
  def dataset_fn_for(name):
    # Each task's records say which task they came from, so samples can be counted.
    return lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
        {"inputs": [name], "targets": ["y"]})
  for name, size in SIZES.items():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn_for(name), ["train"], {"train": size}),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features=output_features(byte_vocabulary()))
  yield list(SIZES)
  for name in SIZES:
    seqio.TaskRegistry.remove(name)


def _rates(tasks, name, **kwargs):
  seqio.MixtureRegistry.add(name, tasks, default_rate=mixtures.examples_proportional(**kwargs))
  try:
    return mixtures.normalized_rates(seqio.get_mixture_or_task(name))
  finally:
    seqio.MixtureRegistry.remove(name)


def test_rates_are_proportional_to_examples_up_to_the_cap(tasks):
  rates = _rates(tasks, "mix_test_capped", cap=3_000)
  total = 100 + 2_000 + 3_000  # the large task counts as 3,000
  assert rates["mix_test_small"] == pytest.approx(100 / total)
  assert rates["mix_test_medium"] == pytest.approx(2_000 / total)
  assert rates["mix_test_large"] == pytest.approx(3_000 / total)


def test_without_a_cap_the_large_task_dominates(tasks):
  rates = _rates(tasks, "mix_test_uncapped")
  assert rates["mix_test_large"] == pytest.approx(50_000 / 52_100)


def test_temperature_flattens_the_rates(tasks):
  rates = _rates(tasks, "mix_test_temperature", cap=3_000, temperature=2.0)
  weights = {"mix_test_small": 100 ** 0.5, "mix_test_medium": 2_000 ** 0.5, "mix_test_large": 3_000 ** 0.5}
  for name, weight in weights.items():
    assert rates[name] == pytest.approx(weight / sum(weights.values()))


def test_the_mixed_stream_follows_the_rates(tasks):
  seqio.MixtureRegistry.add("mix_test_sampled", tasks,
                            default_rate=mixtures.examples_proportional(cap=3_000))
  try:
    mixture = seqio.get_mixture_or_task("mix_test_sampled")
    rates = mixtures.normalized_rates(mixture)
    stream = mixture.get_dataset(None, split="train", shuffle=False, num_epochs=None, seed=0)
    vocabulary = byte_vocabulary()
    draws = [vocabulary.decode(ex["inputs"].tolist()) for ex in stream.take(4_000).as_numpy_iterator()]
  finally:
    seqio.MixtureRegistry.remove("mix_test_sampled")
  for name, rate in rates.items():
    assert draws.count(name) / len(draws) == pytest.approx(rate, abs=0.03)


def test_nested_mixtures_split_each_weight_by_the_parts_own_rates(tasks):
  import flan_jax_tasks.default_mixture  # noqa: F401  (cluster mixtures of the default tasks)
  seqio.MixtureRegistry.add("mix_test_inner", tasks, default_rate=mixtures.examples_proportional(cap=3_000))
  try:
    mixtures.register_weighted_mixture("mix_test_outer", {"mix_test_inner": 3.0, "default_arithmetic": 1.0})
    rates = mixtures.normalized_rates(seqio.get_mixture_or_task("mix_test_outer"))
    inner = sum(rates[t] for t in tasks)
    assert inner == pytest.approx(0.75)
    assert rates["mix_test_small"] == pytest.approx(0.75 * 100 / 5_100)
    # Five equal arithmetic datasets, each rendered five ways (variants share its weight).
    assert rates["default_add_zs_opt"] == pytest.approx(0.25 / 5 / 5)
  finally:
    seqio.MixtureRegistry.remove("mix_test_outer")
    seqio.MixtureRegistry.remove("mix_test_inner")

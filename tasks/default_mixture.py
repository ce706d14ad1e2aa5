"""The built-in default mixture: generated tasks in four clusters, no downloads.

Every generator in `default_generators` becomes a seqio task `default_<name>` with
train and validation splits, its templates, exact-match accuracy, and the byte
vocabulary. Mixtures:

  default_train    every cluster except HELDOUT_CLUSTER, examples-proportional
                   with FLAN's per-task cap
  default_heldout  the held-out cluster's tasks, for zero-shot evaluation
  default_<cluster> one mixture per cluster

Importing this module registers them (gin files do it with an `import` line).
"""

import seqio
import tensorflow as tf

from flan_jax.data import clusters
from flan_jax.data.mixtures import examples_proportional
from flan_jax.data.templates import Template, apply_templates
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.evaluation.metrics import accuracy, strip
from flan_jax_tasks import default_generators as generators

HELDOUT_CLUSTER = "comparison"
SPLIT_SIZES = {"train": 5_000, "validation": 100}
# Different seeds per split, so validation records are drawn independently of train.
_SPLIT_SEEDS = {"train": 0, "validation": 1}
_EXAMPLES_CAP = 3_000  # FLAN's cap on a task's share (rates use min(examples, cap))


def task_name(generator: generators.Generator) -> str:
  return f"default_{generator.name}"


def _dataset_fn(generator: generators.Generator):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # records are generated in a fixed order; seqio shuffles them
    records = generators.generate(generator, _SPLIT_SEEDS[split], SPLIT_SIZES[split])
    return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in records] for k in records[0]})
  return dataset_fn


def _register_task(generator: generators.Generator) -> None:
  seqio.TaskRegistry.add(
      task_name(generator),
      source=seqio.FunctionDataSource(
          _dataset_fn(generator), splits=tuple(SPLIT_SIZES), num_input_examples=SPLIT_SIZES),
      preprocessors=[
          apply_templates([Template(*pair) for pair in generator.templates]),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(byte_vocabulary()),
      postprocess_fn=strip,
      metric_fns=[accuracy],
  )


def tasks_in_cluster(cluster: str) -> list[str]:
  return [task_name(g) for g in generators.GENERATORS if g.cluster == cluster]


for _generator in generators.GENERATORS:
  _register_task(_generator)
  clusters.assign(task_name(_generator), _generator.cluster)

_rate = examples_proportional(cap=_EXAMPLES_CAP)
for _cluster in generators.CLUSTERS:
  seqio.MixtureRegistry.add(f"default_{_cluster}", tasks_in_cluster(_cluster), default_rate=_rate)
seqio.MixtureRegistry.add(
    "default_train",
    [name for c in generators.CLUSTERS if c != HELDOUT_CLUSTER for name in tasks_in_cluster(c)],
    default_rate=_rate)
seqio.MixtureRegistry.add("default_heldout", tasks_in_cluster(HELDOUT_CLUSTER), default_rate=_rate)

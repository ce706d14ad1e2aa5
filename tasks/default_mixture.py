"""The built-in default mixture: generated tasks in four clusters, no downloads.

Every generator in `default_generators` is registered as a FLAN task (`FlanTaskSpec`)
named `default_<name>`: a mixture over its variants `default_<name>_zs_noopt`,
`_zs_opt`, `_zs_opt_random`, `_fs_noopt` and `_fs_opt`, with train and validation
splits, its templates, the byte vocabulary and exact-match accuracy. Every record has
answer options (yes/no, the two things compared, or the answer and a wrong one), so
every cluster trains the model to pick among listed options, and options tasks are
evaluated by rank classification. Mixtures:

  default_train    every cluster except HELDOUT_CLUSTER: each dataset weighted by
                   min(examples, cap), shared among its variants (FLAN's rule)
  default_heldout  the held-out cluster's tasks, for zero-shot evaluation; its mean
                   is FLAN's score (zero-shot with options, rank classification)
  default_<cluster> one mixture per cluster

The held-out cluster, `comparison`, asks about two named things: "Which is larger, 7
or 3?", "Which word is longer, cat or house?", "Are cat and dog the same word?".
No training task has that format. The knowledge it needs is taught elsewhere, in
other formats: magnitude and word length by the list tasks (the largest, smallest or
longest of 3-5 items), and identity by membership questions (list_contains,
word_in_list, starts_with). Numbers are single digits (1-8) throughout: with two-digit
numbers the ~1M-parameter quickstart model barely learns list_max in 400 steps, and
magnitude does not transfer.

No held-out task is a training task renamed. The training lists never have two
items, and the list tasks' answer options are no pairwise comparison in disguise.
Half of their distractors lie outside the list and beyond the answer (a number above
the maximum, a word at least as long as the longest), so "pick the larger of the two
options" scores about half on them (`test_default_generators` checks it). Parity
(is_even), which nothing else teaches, trains in `arithmetic`.

Importing this module registers them (gin files do it with an `import` line).
"""

import functools

import seqio

from flan_jax.data import clusters
from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.templates import Template
from flan_jax.data.vocabularies import byte_vocabulary
from flan_jax.metrics import accuracy
from flan_jax_tasks import default_generators as generators

HELDOUT_CLUSTER = "comparison"
SPLIT_SIZES = {"train": 5_000, "validation": 100}
# Different seeds per split, so validation records are drawn independently of train.
_SPLIT_SEEDS = {"train": 0, "validation": 1}
_EXAMPLES_CAP = 3_000  # FLAN's cap on a task's share (rates use min(examples, cap))
FEW_SHOT_K = 2  # short prompts: two exemplars fit the quickstart's 96 input bytes


def task_name(generator: generators.Generator) -> str:
  """The generator's dataset: a mixture over its variant tasks."""
  return f"default_{generator.name}"


def _records(generator: generators.Generator, split: str) -> list[dict]:
  return generators.generate(generator, _SPLIT_SEEDS[split], SPLIT_SIZES[split])


def _spec(generator: generators.Generator) -> FlanTaskSpec:
  return FlanTaskSpec(
      name=task_name(generator), cluster=generator.cluster,
      records=functools.partial(_records, generator),
      templates=tuple(Template(*pair) for pair in generator.templates),
      options="options", few_shot_k=FEW_SHOT_K, metric_fns=(accuracy,),
      vocabulary=byte_vocabulary())


def tasks_in_cluster(cluster: str) -> list[str]:
  """The variant tasks of the cluster's generators."""
  return [task.name for g in generators.GENERATORS if g.cluster == cluster
          for task in seqio.get_mixture_or_task(task_name(g)).tasks]


for _generator in generators.GENERATORS:
  if task_name(_generator) not in seqio.MixtureRegistry.names():
    register_flan_task(_spec(_generator))

_rate = functools.partial(clusters.dataset_shared_rates, cap=_EXAMPLES_CAP)
for _cluster in generators.CLUSTERS:
  seqio.MixtureRegistry.add(f"default_{_cluster}", _rate(tasks_in_cluster(_cluster)))
clusters.register_leave_one_out(
    HELDOUT_CLUSTER, among=[t for c in generators.CLUSTERS for t in tasks_in_cluster(c)],
    overlaps={}, cap=_EXAMPLES_CAP, train_name="default_train", eval_name="default_heldout")

"""Evaluate any checkpoint on a task, a mixture or a held-out cluster: the job behind
`python -m flan_jax.eval`.

The checkpoint is a training run's MODEL_DIR (its latest checkpoint, or `step`), an
orbax checkpoint from `convert --to_orbax`, or a Hugging Face directory. Tasks are
evaluated as training evaluates them (`evaluator`: rank classification for options
tasks, the task's own metrics, the same prompts for a seed); inverted tasks are
skipped. Written to OUTPUT_DIR/eval/<name>.json: {"results": {"task/metric": value},
"groups": {group: [tasks]}} with the means of `eval_groups` (FLAN's zero-shot score
`all`, one per cluster, one per variant). A table is printed, and
OUTPUT_DIR/eval/<name>.png charts the per-cluster means.
"""

import json
import os
from typing import Mapping, Sequence

import jax

from flan_jax import finetune, paths
from flan_jax.data import chat_examples, clusters, registry, vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator, placement
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.evaluation.report import print_results
from flan_jax.models import convert, families
from flan_jax.models.pretrained import load_pretrained
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib


def load_checkpoint(path: str, step: int | None = None):
  """(model config, params) from a run directory, an orbax checkpoint or a Hugging Face one."""
  if not os.path.isdir(path):
    raise UserError(f"CHECKPOINT_PATH {path!r} is not a directory.")
  if os.path.isdir(os.path.join(path, "checkpoints")):  # a training run's MODEL_DIR
    config, params, _ = convert.load_orbax(path, step)
    return config, params
  if step is not None:
    raise UserError(f"evaluate.step={step} needs a run directory (with checkpoints/); "
                    f"{path} holds a single checkpoint.")
  return load_pretrained(path)


def eval_groups(task_names: list[str]) -> dict[str, list[str]]:
  """The tasks behind each reported mean: `mean` (per dataset its zero-shot options task,
  FLAN's score), one per cluster (`cluster_<name>`, same rule) and one per variant."""
  headline = clusters.headline_tasks(task_names)
  groups = {"all": headline, **clusters.cluster_groups(headline)}
  for variant, names in sorted(clusters.variant_groups(task_names).items()):
    groups[f"variant_{variant}"] = names
  return groups


def plot_clusters(means: Mapping[str, float], metric: str, title: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = sorted(means)
  fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 3.5))
  ax.bar([n.removeprefix("cluster_") for n in names], [means[n] for n in names])
  ax.set_ylabel(metric)
  ax.set_title(title)
  plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def evaluate_checkpoint(
    checkpoint_path: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    output_dir: str,
    *,
    step: int | None = None,
    evaluation: EvalConfig | None = None,
    data_dir: str | None = None,
    vocabulary_path: str | None = None,
    mesh_shape: tuple[int, ...] = (-1, 1, 1),
    dcn_mesh_shape: tuple[int, ...] | None = None,
    chat_tasks: Sequence[chat_examples.ChatTask] = (),
) -> dict:
  """Evaluates the checkpoint; returns what it writes to OUTPUT_DIR/eval/<name>.json.

  `chat_tasks` (conversation files with `validation_records`) are rendered with the
  chat template the checkpoint was trained with (`chat_examples.trained_template`).
  """
  evaluation = evaluation or EvalConfig()
  if data_dir:  # the task library, tokenized as `train` would tokenize it
    from flan_jax_tasks import library
    library.register(data_dir, vocabularies.library_vocabulary(vocabulary_path, checkpoint_path))
  if chat_tasks:
    chat_vocabulary = (vocabularies.library_vocabulary(vocabulary_path, checkpoint_path)
                       or vocabularies.byte_vocabulary())
    recorded = chat_examples.trained_template(checkpoint_path)
    trained = chat_examples.recorded_held_out(checkpoint_path)
    held_out = paths.join(checkpoint_path, chat_examples.HELD_OUT_FILE)  # for the message
    for chat_task in chat_tasks:
      if recorded is None and chat_task.template is None:
        raise UserError(f"{checkpoint_path} records no chat template (no "
                        f"{chat_examples.TEMPLATE_FILE}, no chat_template in a "
                        f"tokenizer_config.json), so ChatTask {chat_task.name!r} cannot render "
                        "as training did by itself: set ChatTask.template to the one training "
                        "used.")
      chat_examples.check_held_out(trained, chat_task, held_out)
      chat_task.register(chat_vocabulary, recorded)
  finetune.ensure_writable_dir(output_dir)
  tasks = [t for t in registry.leaf_tasks(mixture_or_task_name)
           if clusters.is_evaluated(t.name) and evaluator.eval_split(t, evaluation.split)]
  unsplit = [t.name for t in chat_tasks if not t.validation_records]
  if unsplit:
    raise UserError(f"ChatTask {unsplit[0]!r} has no validation split to evaluate: set "
                    "ChatTask.validation_records to the value training used.")
  if not tasks:
    raise UserError(f"{mixture_or_task_name} has no task with a {evaluation.split!r} split "
                    "to evaluate; set EvalConfig.split.")
  vocabulary = finetune.task_vocabulary(tasks)
  config, params = load_checkpoint(checkpoint_path, step)
  finetune.check_vocabulary_fits(config, vocabulary, checkpoint_path)
  network = families.family_for(config, bos_id=vocabularies.bos_id(vocabulary),
                                num_token_ids=vocabulary.vocab_size)
  # Parameters go to the devices once, in training's layout; rows split over the data axes.
  mesh = mesh_lib.make_mesh(mesh_shape, dcn_shape=dcn_mesh_shape)
  params = step_lib.place_params(network, mesh, task_feature_lengths, params)
  model = evaluator.make_eval_model(network, params, task_feature_lengths, vocabulary.eos_id,
                                    evaluation.batch_size,
                                    placement=placement.sharded_rows(mesh_lib.batch_sharding(mesh)))
  with mesh_lib.on_mesh(mesh):
    results = evaluator.evaluate(tasks, model, evaluation)
  groups = eval_groups([t.name for t in tasks])
  results.update(evaluator.group_means(results, groups))
  report = {"results": results, "groups": groups}
  if jax.process_index() == 0:
    directory = os.path.join(output_dir, "eval")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{mixture_or_task_name}.json"), "w") as f:
      json.dump(report, f, indent=2, sort_keys=True)
    metric = next((k.rsplit("/", 1)[1] for k in results if k.startswith("all_mean/")), None)
    cluster_means = {k.split("_mean/")[0]: v for k, v in results.items()
                     if k.startswith("cluster_") and k.endswith(f"_mean/{metric}")}
    if cluster_means:
      plot_clusters(cluster_means, metric, f"{mixture_or_task_name}: {checkpoint_path}",
                    os.path.join(directory, f"{mixture_or_task_name}.png"))
    print_results(results, groups, title=f"{mixture_or_task_name}: {checkpoint_path}")
  return report

"""Evaluate any checkpoint on a task, a mixture or a held-out cluster: the job behind
`python -m flan_jax.eval`.

The checkpoint is a training run's MODEL_DIR (its latest checkpoint, or `step`), an
orbax checkpoint from `convert --to_orbax`, or a Hugging Face directory. Tasks are
evaluated as training evaluates them (`evaluator`: rank classification for options
tasks, the task's own metrics, the same prompts for a seed); inverted tasks are
skipped. Written to OUTPUT_DIR/eval/<name>.json: {"results": {"task/metric": value},
"groups": {group: [tasks]}, "scoring": how the numbers were produced (the BOS rule,
each task's option scoring, `length_normalize`, the model's position limit; see
`evaluator.scoring_conventions`)} with the means of `job.eval_groups` (FLAN's zero-shot score
`all`, one per cluster, one per variant). A table is printed, and
OUTPUT_DIR/eval/<name>.png charts the per-cluster means.
"""

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh
import seqio

from flan_jax import job, model_dir, paths
from flan_jax.data import chat_examples, clusters, registry, vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.evaluation.report import print_results
from flan_jax.models import peft_io
from flan_jax.models.families import ModelFamily
from flan_jax.models.pretrained import load_pretrained
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib


def load_checkpoint(path: str | model_dir.ResolvedCheckpoint, step: int | None = None):
  """(model config, params) from a run directory, an orbax checkpoint or a Hugging Face one;
  with a LoRA run or an adapter beside the base (`model_dir.resolve(path, adapter=DIR)`),
  the base and its adapters, unmerged (`config.lora` set)."""
  checkpoint = model_dir.resolve(path)
  if not paths.isdir(checkpoint.directory):
    raise UserError(f"CHECKPOINT_PATH {checkpoint.path!r} is not a directory.")
  if step is not None and checkpoint.kind != "run" and not checkpoint.adapter_run:
    raise UserError(f"evaluate.step={step} needs a run directory (with "
                    f"{model_dir.CHECKPOINTS_DIR}/); {checkpoint.path} holds a single checkpoint.")
  return load_pretrained(checkpoint, step, setting="CHECKPOINT_PATH")


def load_for_serving(path: str | model_dir.ResolvedCheckpoint, step: int | None = None,
                     vocabulary_path: str | None = None):
  """(model family, host params, vocabulary) of a checkpoint, for serving it (`infer`,
  the lm-eval backend).

  The vocabulary is `vocabulary_path`, else the checkpoint's own tokenizer, else bytes
  where the model's embedding rows are the byte vocabulary's.

  LoRA adapters (a LoRA run, or an adapter beside its base) are served merged into
  their weights (W + scaling * A @ B in W's dtype, as `convert --merge_lora` exports
  them), folded in place weight by weight so that the host never holds two models (a scanned
  run's layers are slices of stacked arrays, freed only once every layer is folded); the
  network then runs plain projections (its config has no lora). With a bfloat16 base
  the merged weights round the update to bfloat16, as any merged export does.
  """
  checkpoint = model_dir.resolve(path)
  vocabulary = vocabularies.library_vocabulary(vocabulary_path, checkpoint.tokenizer_dir)
  config, params = load_checkpoint(checkpoint, step)
  if config.lora is not None:
    config, params = peft_io.merge(params, config, in_place=True)
  if vocabulary is None:
    vocabulary = vocabularies.byte_vocabulary()
    if config.vocab_size != vocabulary.vocab_size:  # not a byte-level model: bytes would be noise
      raise UserError(f"{checkpoint.path} keeps no tokenizer and its {config.vocab_size} "
                      "embedding rows are not the byte vocabulary's: pass the tokenizer it was "
                      "trained with (--vocabulary=PATH, e.g. the run's VOCABULARY_PATH).")
  job.check_vocabulary_fits(config, vocabulary, checkpoint.path)
  return job.network_for(config, vocabulary), params, vocabulary


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


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A checkpoint loaded once and placed on the mesh in training's layout, for any number
  of evaluations (`evaluate_checkpoint`'s one, or every member of `suite`)."""
  checkpoint: model_dir.ResolvedCheckpoint
  network: ModelFamily
  params: Any  # on the mesh
  mesh: Mesh
  vocabulary: seqio.Vocabulary
  max_length: int | None  # the model's position limit, where known (`position_limit`)

  def evaluate(self, tasks: Sequence[seqio.Task], task_feature_lengths: Mapping[str, int],
               evaluation: EvalConfig, samples: dict | None = None) -> dict:
    """{"results", "groups", "scoring"} of `tasks`, as OUTPUT_DIR/eval/<name>.json holds them;
    `samples`, if given, receives each task's per-example records."""
    groups = job.eval_groups([t.name for t in tasks])
    results = job.MeshEvaluation(self.network, self.mesh, tasks, task_feature_lengths,
                                 self.vocabulary.eos_id, evaluation, groups,
                                 max_length=self.max_length, samples=samples)(self.params)
    return {"results": results, "groups": groups,
            "scoring": evaluator.scoring_conventions(self.network, [t.name for t in tasks],
                                                     evaluation, self.max_length)}


def load_model(checkpoint: model_dir.ResolvedCheckpoint, vocabulary: seqio.Vocabulary,
               task_feature_lengths: Mapping[str, int], *, step: int | None = None,
               mesh_shape: tuple[int, ...] = (-1, 1, 1),
               dcn_mesh_shape: tuple[int, ...] | None = None) -> LoadedModel:
  """The checkpoint's parameters on the devices, once, for tasks tokenized by `vocabulary`.
  LoRA adapters stay unmerged, beside their base weights: evaluation computes what
  training's own evaluation computed (a bfloat16 base keeps the update in float32)."""
  config, params = load_checkpoint(checkpoint, step)
  job.check_vocabulary_fits(config, vocabulary, checkpoint.path)
  network = job.network_for(config, vocabulary)
  # Parameters go to the devices once, in training's layout; rows split over the data axes.
  mesh = mesh_lib.make_mesh(mesh_shape, dcn_shape=dcn_mesh_shape)
  params = step_lib.place_params(network, mesh, task_feature_lengths, params)
  return LoadedModel(checkpoint, network, params, mesh, vocabulary, position_limit(checkpoint))


def evaluated_tasks(mixture_or_task_name: str, evaluation: EvalConfig) -> list[seqio.Task]:
  """The mixture's tasks that evaluation reads: not inverted, with the split to read."""
  tasks = [t for t in registry.leaf_tasks(mixture_or_task_name)
           if clusters.is_evaluated(t.name) and evaluator.eval_split(t, evaluation.split)]
  if not tasks:
    raise UserError(f"{mixture_or_task_name} has no task with a {evaluation.split!r} split "
                    "to evaluate; set EvalConfig.split.")
  return tasks


def evaluate_checkpoint(
    checkpoint_path: str | model_dir.ResolvedCheckpoint,
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
    log_samples: bool = False,
) -> dict:
  """Evaluates the checkpoint; returns what it writes to OUTPUT_DIR/eval/<name>.json.

  `chat_tasks` (conversation files with `validation_records`) are rendered with the
  chat template the checkpoint was trained with (`chat_examples.trained_template`).
  `log_samples` also writes each task's per-example records, as lm-eval's
  --log_samples does, to OUTPUT_DIR/eval/<name>_samples/<task>.jsonl: the prompt, the
  raw output (the chosen option or the generation), the prediction and target the
  metrics compared, and for options tasks each option's log-likelihood.
  `checkpoint_path` may be resolved with an adapter beside it
  (`model_dir.resolve(path, adapter=DIR)`): the base with that adapter is evaluated.
  """
  evaluation = evaluation or EvalConfig()
  checkpoint = model_dir.resolve(checkpoint_path)
  # The task library tokenized as `train` would tokenize it; conversations rendered as
  # the checkpoint's training rendered them.
  job.register_tasks(data_dir, vocabulary_path, checkpoint, chat_tasks,
                     register=_registration_as_trained(checkpoint))
  job.ensure_writable_dir(output_dir)
  unsplit = [t.name for t in chat_tasks if not t.validation_records]
  if unsplit:
    raise UserError(f"ChatTask {unsplit[0]!r} has no validation split to evaluate: set "
                    "ChatTask.validation_records to the value training used.")
  tasks = evaluated_tasks(mixture_or_task_name, evaluation)
  model = load_model(checkpoint, job.task_vocabulary(tasks), task_feature_lengths, step=step,
                     mesh_shape=mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
  samples = {} if log_samples else None
  report = model.evaluate(tasks, task_feature_lengths, evaluation, samples=samples)
  results, groups = report["results"], report["groups"]
  if jax.process_index() == 0:
    directory = os.path.join(output_dir, model_dir.EVAL_DIR)
    os.makedirs(directory, exist_ok=True)
    paths.write_json(os.path.join(directory, f"{mixture_or_task_name}.json"), report, indent=2,
                     sort_keys=True)
    if samples is not None:
      write_samples(samples, os.path.join(directory, f"{mixture_or_task_name}_samples"))
    metric = next((k.rsplit("/", 1)[1] for k in results if k.startswith("all_mean/")), None)
    cluster_means = {k.split("_mean/")[0]: v for k, v in results.items()
                     if k.startswith("cluster_") and k.endswith(f"_mean/{metric}")}
    if cluster_means:
      plot_clusters(cluster_means, metric, f"{mixture_or_task_name}: {checkpoint.name}",
                    os.path.join(directory, f"{mixture_or_task_name}.png"))
    print_results(results, groups, title=f"{mixture_or_task_name}: {checkpoint.name}")
  return report


def write_samples(samples: Mapping[str, list[dict]], directory: str) -> None:
  """One JSON line per example, one file per task."""
  paths.makedirs(directory)
  for task, records in samples.items():
    paths.write_atomically(paths.join(directory, f"{task}.jsonl"), "".join(
        json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def position_limit(checkpoint: model_dir.ResolvedCheckpoint) -> int | None:
  """A Hugging Face checkpoint's max_position_embeddings, the length lm-eval cuts rows to;
  None for our own checkpoints, which record no limit."""
  if checkpoint.kind != "hf":
    return None
  value = paths.read_json(checkpoint.config_file).get("max_position_embeddings")
  return int(value) if value else None


def _registration_as_trained(checkpoint: model_dir.ResolvedCheckpoint):
  """Registers a conversation task to render as the checkpoint's training rendered it,
  and to score only the records training held out."""
  def register(chat_task: chat_examples.ChatTask, vocabulary) -> None:
    recorded = chat_examples.trained_template(checkpoint.chat_template_file())
    if recorded is None and chat_task.template is None:
      raise UserError(f"{checkpoint.path} records no chat template (no "
                      f"{model_dir.TEMPLATE_FILE}, no chat_template in a "
                      f"tokenizer_config.json), so ChatTask {chat_task.name!r} cannot render "
                      "as training did by itself: set ChatTask.template to the one training "
                      "used.")
    held_out = paths.join(checkpoint.adapter_run or checkpoint.path,  # for the message
                          model_dir.HELD_OUT_FILE)
    chat_examples.check_held_out(checkpoint.held_out(), chat_task, held_out)
    chat_task.register(vocabulary, recorded)
  return register

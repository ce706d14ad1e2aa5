"""Finetune on a mixture and measure what it changed on seen and held-out tasks.

The whole job behind `python -m flan_jax.train`: evaluate the untrained model, train
(resuming if MODEL_DIR has a checkpoint), evaluate again, and write the comparison
to MODEL_DIR/eval/heldout.json as {"before": {...}, "after": {...}}, keyed
"task/metric", for the held-out tasks and the training tasks' validation splits,
with the means of `report_groups` (FLAN's held-out score `heldout_mean/...` and one
mean per variant) and the tasks each mean covers ("groups").
MODEL_DIR also gets the model's config (flan_jax_config.json), so the run exports to
Hugging Face with `python -m flan_jax.models.convert --from_orbax=MODEL_DIR --to_hf=...`,
and the entry point's resolved configuration (config.gin). Nothing is written there
before the run holds MODEL_DIR's lock and its settings are checked against those the
directory recorded: a refused run leaves another run's record as it was.
"""

import dataclasses
import json
import os
import socket
from typing import Mapping

import jax
import seqio

from flan_jax import paths
from flan_jax.data import (chat_examples, chat_export, clusters, pipeline, registry,
                           vocabularies)
from flan_jax.errors import UserError, check_whole_number
from flan_jax.evaluation import evaluator, placement
from flan_jax.evaluation.report import print_comparison
from flan_jax.models import convert, families
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.layer_stack import stack_layers
from flan_jax.models.pretrained import load_pretrained
from flan_jax.models.t5 import T5Config
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import optimizer as optimizer_lib
from flan_jax.training import trainer as trainer_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training import metrics_writer
from flan_jax.training.metrics_writer import MetricsWriter
from flan_jax.training.run_lock import RunLock


def ensure_writable_dir(path: str) -> str:
  """Creates `path` if needed and proves it writable, before any expensive work."""
  if not path:
    raise UserError("MODEL_DIR is empty: set it, e.g. --gin.MODEL_DIR=/tmp/my_run.")
  # A unique probe name: in a multi-host run every process checks the same directory
  # at once, and a shared name would let one process delete another's probe.
  probe = paths.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
  try:
    paths.makedirs(path)
    paths.write_atomically(probe, "")
    paths.remove(probe)
  except Exception as e:  # OSError locally; the bucket clients raise their own kinds
    reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise UserError(f"MODEL_DIR {path!r} is not writable ({reason}); choose a directory "
                    "you can write to, e.g. --gin.MODEL_DIR=/tmp/my_run.") from None
  return path


def task_vocabulary(tasks: list[seqio.Task]) -> seqio.Vocabulary:
  """The one vocabulary every task shares (a clear error when they differ)."""
  vocabulary = tasks[0].output_features["targets"].vocabulary
  others = [t.name for t in tasks if t.output_features["targets"].vocabulary != vocabulary]
  if others:
    raise UserError(f"All tasks must share one vocabulary, but {others} differ from "
                    f"{tasks[0].name}'s.")
  return vocabulary


def check_feature_lengths(lengths: Mapping[str, int]) -> None:
  """TASK_FEATURE_LENGTHS: {"inputs": tokens >= 0 (0: none, for plain text and
  conversations), "targets": tokens >= 1}."""
  if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
    raise UserError("TASK_FEATURE_LENGTHS must be a dict with keys 'inputs' and 'targets', e.g. "
                    f"{{'inputs': 512, 'targets': 128}}; got {lengths!r}.")
  check_whole_number("TASK_FEATURE_LENGTHS['inputs']", lengths["inputs"], 0)
  check_whole_number("TASK_FEATURE_LENGTHS['targets']", lengths["targets"], 1)


def check_vocabulary_fits(model: DecoderConfig | T5Config, vocabulary: seqio.Vocabulary,
                          checkpoint_path: str) -> None:
  """A checkpoint needs an embedding row for every id the tasks' tokenizer produces."""
  if model.vocab_size < vocabulary.vocab_size:
    raise UserError(
        f"The tasks' vocabulary has {vocabulary.vocab_size} ids but the checkpoint at "
        f"{checkpoint_path} has only {model.vocab_size} embedding rows: register the "
        "tasks with the model's own tokenizer (its tokenizer.model or tokenizer.json; for "
        "the task library, --gin.VOCABULARY_PATH=...).")


def check_same_model(model_dir: str, model: DecoderConfig | T5Config) -> None:
  """A run resumes only into the model it saved: other shapes cannot restore."""
  path = paths.join(model_dir, convert.CONFIG_FILE)
  if not paths.isdir(paths.join(model_dir, "checkpoints")) or not paths.exists(path):
    return
  saved = json.loads(paths.read_text(path))
  current = {"family": convert.family(model), **dataclasses.asdict(model)}
  # Compute settings may change between runs; the parameters' shapes, dtypes and
  # layout (scan_layers) may not.
  free = ("dtype", "remat_policy", "attention_implementation", "dropout_rate")
  differ = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in current.items()
            if k not in free and saved.get(k, v) != v]
  if differ:
    raise UserError(f"{model_dir} holds checkpoints of another model: {', '.join(differ)}. "
                    "Resume with the same model settings, or choose a new MODEL_DIR.")


# Model-config fields that say how to run a model, not what it is: a pretrained
# checkpoint's config takes these from gin.
_HOW_IT_RUNS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_implementation",
                "dropout_rate")


def _check_recorded_conversations(model_dir: str, tasks: list[seqio.Task]):
  """(template, held-out record) of the run's conversation tasks, which a resumed run
  must share with the run it resumes (checked on every process, so none goes on alone)."""
  template = chat_examples.recorded_template(tasks)
  held_out = chat_examples.held_out_record(tasks)
  recorded = paths.join(model_dir, chat_examples.TEMPLATE_FILE)
  if template is not None and paths.exists(recorded):
    before = chat_examples.load_template(recorded)
    if before != template:
      raise UserError(f"{recorded} records chat template {before.name!r}, but this run renders "
                      f"conversations with {template.name!r}: its checkpoints would answer "
                      "prompts in two formats. Use the recorded template, or a new MODEL_DIR.")
    held_out_before = chat_examples.recorded_held_out(model_dir)
    for name, now in held_out.items():
      if name in held_out_before and held_out_before[name] != now:
        raise UserError(f"{paths.join(model_dir, chat_examples.HELD_OUT_FILE)}: {name} held out "
                        f"{held_out_before[name]}, but this run holds out {now}: training "
                        "would read conversations it evaluated on, or the other way round. Use "
                        "the recorded setting, or a new MODEL_DIR.")
  return template, held_out


def _tasks_with_split(tasks: list[seqio.Task], split: str) -> list[seqio.Task]:
  return [t for t in tasks if evaluator.eval_split(t, split)]


def finetune(**settings) -> dict[str, dict[str, float]]:
  """`_finetune`, holding MODEL_DIR's run lock: a second run on it is refused."""
  model_dir = ensure_writable_dir(settings["model_dir"])
  with RunLock(model_dir, enabled=jax.process_index() == 0):
    return _finetune(**settings)


def _finetune(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    trainer: trainer_lib.TrainerConfig,
    model: DecoderConfig | T5Config = DecoderConfig(),
    optimizer: optimizer_lib.OptimizerConfig = optimizer_lib.OptimizerConfig(),
    heldout_mixture_or_task_name: str | None = None,
    evaluation: evaluator.EvalConfig = evaluator.EvalConfig(),
    evaluate_before: bool = True,
    initial_checkpoint_path: str | None = None,
    truncation_sample: int = 100,
    data_workers: int | None = None,
    config_gin: str | None = None,
) -> dict[str, dict[str, float]]:
  """Evaluates, trains, evaluates again; returns {"before", "after", "groups"}.

  `truncation_sample`: examples per training task read before training to count and
  report prompts and targets that the run's lengths cut (0: skip the report).
  `data_workers`: processes that render and tokenize training examples (None: one per
  spare core on an accelerator, none on the CPU; the data is the same for any number).
  `config_gin`: the entry point's resolved configuration, recorded as MODEL_DIR/config.gin.
  """
  ensure_writable_dir(model_dir)
  seen_tasks = registry.leaf_tasks(mixture_or_task_name)
  heldout_tasks = registry.leaf_tasks(heldout_mixture_or_task_name) if heldout_mixture_or_task_name else []
  check_feature_lengths(task_feature_lengths)
  workers = pipeline.default_workers(jax.default_backend()) if data_workers is None else data_workers
  if workers < 0:  # before any evaluation: a setting's error should not wait minutes
    raise UserError(f"data_workers must be >= 0 (0: render examples in the training process), "
                    f"got {workers}.")
  # Evaluation runs on training's mesh: parameters in training's layout, each batch's
  # rows split over the data axes and the hosts.
  mesh = mesh_lib.make_mesh(trainer.mesh_shape, dcn_shape=trainer.dcn_mesh_shape)
  mesh_lib.check_batch_fits(mesh, batch_size)
  if batch_size % trainer.microbatches:
    raise UserError(f"BATCH_SIZE={batch_size} does not split into microbatches="
                    f"{trainer.microbatches} equal slices.")
  rows = placement.sharded_rows(mesh_lib.batch_sharding(mesh))
  vocabulary = task_vocabulary(seen_tasks + heldout_tasks)
  initial_params = None
  if initial_checkpoint_path:
    # The checkpoint fixes the architecture; gin's model config keeps only how it runs.
    pretrained, initial_params = load_pretrained(initial_checkpoint_path)
    model = dataclasses.replace(pretrained, **{k: getattr(model, k) for k in _HOW_IT_RUNS})
    if model.scan_layers:  # checkpoints are stored one layer per subtree
      initial_params = stack_layers(initial_params)
    # The model may have more embedding rows than the tokenizer has ids: T5 pads its
    # 32,100 ids to 32,128 rows, Qwen2 its 151,665 to 151,936. No task produces those
    # ids, and generation and scoring mask them out (`num_token_ids` below). Fewer rows
    # than ids cannot run the tasks' tokens at all.
    check_vocabulary_fits(model, vocabulary, initial_checkpoint_path)
  if not model.vocab_size:
    model = dataclasses.replace(model, vocab_size=vocabulary.vocab_size)
  network = families.family_for(model, bos_id=vocabularies.bos_id(vocabulary),
                                num_token_ids=vocabulary.vocab_size)
  # What MODEL_DIR records is written only now, holding its lock, once this run's
  # settings agree with what it recorded: a refused run leaves the files of the run it
  # would have resumed or disturbed as they were.
  check_same_model(model_dir, model)
  template, held_out = _check_recorded_conversations(model_dir, seen_tasks + heldout_tasks)
  if jax.process_index() == 0:  # one writer into the shared MODEL_DIR
    if config_gin is not None:
      paths.write_atomically(paths.join(model_dir, "config.gin"), config_gin)
    # So `convert --from_orbax=MODEL_DIR --to_hf=...` can export.
    convert.save_run_config(model_dir, model, initial_checkpoint_path)
    # Conversations: the template they were rendered with, for `infer --chat` and
    # `eval` to render prompts exactly so, and the records training never read.
    if template is not None:
      paths.write_atomically(paths.join(model_dir, chat_examples.TEMPLATE_FILE),
                             template.to_json())
      paths.write_atomically(paths.join(model_dir, chat_examples.HELD_OUT_FILE),
                             json.dumps(held_out, indent=1, sort_keys=True))
      # The tokenizer, template and stop id a server needs, for the Hugging Face export.
      chat_export.write_served_files(paths.join(model_dir, convert.HF_FILES_DIR), template,
                                     vocabulary)

  # Inverted tasks (write the question from the answer) cannot be scored against labels.
  heldout_tasks = [t for t in heldout_tasks if clusters.is_evaluated(t.name)]
  eval_tasks = _tasks_with_split(heldout_tasks, evaluation.split)
  seen_eval_tasks = []
  if evaluation.evaluate_seen:
    # Per seen dataset, the task its score counts (see `report_groups`): a library
    # renders each dataset several ways, and evaluating all of them costs hours.
    headline = set(clusters.headline_tasks([t.name for t in seen_tasks]))
    seen_eval_tasks = [t for t in _tasks_with_split(seen_tasks, evaluation.split)
                       if t.name in headline]
    eval_tasks = seen_eval_tasks + eval_tasks
  groups = report_groups([t.name for t in seen_eval_tasks], [t.name for t in heldout_tasks])
  inputs_eos = network.inputs_eos

  def evaluate(params) -> dict[str, float]:
    model = evaluator.make_eval_model(network, params, task_feature_lengths, vocabulary.eos_id,
                                      evaluation.batch_size, placement=rows)
    with mesh_lib.on_mesh(mesh):
      results = evaluator.evaluate(eval_tasks, model, evaluation)
    return {**results, **evaluator.group_means(results, groups)}

  if jax.process_index() == 0 and truncation_sample:
    pipeline.report_truncation(seen_tasks, task_feature_lengths, inputs_eos=inputs_eos,
                               examples_per_task=truncation_sample, seed=trainer.seed)

  before = {}
  if evaluate_before and eval_tasks:
    # The parameters training starts from (the same seed), placed as training places them.
    before = evaluate(step_lib.place_params(network, mesh, task_feature_lengths,
                                            initial_params, seed=trainer.seed))

  # The evaluation curve in metrics.jsonl and TensorBoard: before at step 0, every
  # `trainer.eval_every` steps (the trainer), and after at the last step.
  _log_evaluation(model_dir, 0, before)

  def batches(start_step: int, state=None):
    return pipeline.train_batches(
        mixture_or_task_name, task_feature_lengths, batch_size, seed=trainer.seed,
        shard_index=jax.process_index(), num_shards=jax.process_count(), skip_batches=start_step,
        encoder_decoder=network.encoder_decoder, bos_id=network.bos_id,
        inputs_eos=inputs_eos, state=state, workers=workers)

  state = trainer_lib.train(network, optimizer, trainer, batches, model_dir, task_feature_lengths,
                            initial_params=initial_params,
                            evaluate=(lambda p: logged_means(evaluate(p))) if eval_tasks else None)
  after = evaluate(state.params) if eval_tasks else {}
  _log_evaluation(model_dir, trainer.train_steps, after)

  results = {"before": before, "after": after, "groups": groups}
  if jax.process_index() == 0:
    paths.write_atomically(paths.join(model_dir, "eval", "heldout.json"),
                           json.dumps(results, indent=2, sort_keys=True))
    if before or after:  # a run without evaluation tasks (conversations) has no table
      print_comparison(before, after, groups)
  return results


def _log_evaluation(model_dir: str, step: int, results: Mapping[str, float]) -> None:
  """Evaluation means at `step`, unless a run on this MODEL_DIR logged them already (a
  resumed run evaluates "before" again; a finished run rerun evaluates "after" again)."""
  if results and jax.process_index() == 0 and not _evaluation_logged(model_dir, step):
    writer = MetricsWriter(model_dir)
    writer.write(step, {f"eval/{name}": value for name, value in logged_means(results).items()})
    writer.close()


def _evaluation_logged(model_dir: str, step: int) -> bool:
  return any(record.get("step") == step and any(k.startswith("eval/") for k in record)
             for record in metrics_writer.read_records(model_dir))


def logged_means(results: Mapping[str, float]) -> dict[str, float]:
  """The means among evaluation results ("heldout_mean/accuracy", ...): what goes to
  TensorBoard during training; per-task scores stay in eval/heldout.json."""
  return {name: value for name, value in results.items() if "_mean/" in name}


def report_groups(seen: list[str], heldout: list[str]) -> dict[str, list[str]]:
  """The tasks each reported mean averages.

  `heldout` is FLAN's zero-shot score: per held-out dataset its zero-shot options task
  (else its zero-shot task). `heldout_<variant>` gives each variant's mean beside it
  (few-shot, no options, CoT, ...). `seen` uses the same rule on the training tasks,
  and `cluster_<name>` on each task cluster's share of both.
  """
  groups = {"seen": clusters.headline_tasks(seen), "heldout": clusters.headline_tasks(heldout)}
  for variant, names in sorted(clusters.variant_groups(heldout).items()):
    groups[f"heldout_{variant}"] = names
  groups.update(clusters.cluster_groups(groups["seen"] + groups["heldout"]))
  return {name: tasks for name, tasks in groups.items() if tasks}

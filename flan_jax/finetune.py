"""Finetune on a mixture and measure what it changed on seen and held-out tasks.

The whole job behind `python -m flan_jax.train`: evaluate the untrained model, train
(resuming if MODEL_DIR has a checkpoint), evaluate again, and write the comparison
to MODEL_DIR/eval/heldout.json as {"before": {...}, "after": {...}}, keyed
"task/metric", for the held-out tasks and the training tasks' validation splits,
with the means of `job.report_groups` (FLAN's held-out score `heldout_mean/...` and one
mean per variant) and the tasks each mean covers ("groups").
With `decontamination`, every training example is first checked against the named
evaluation tasks and the contaminated ones are never read (`run_decontamination`);
MODEL_DIR/decontamination.json and heldout.json's "decontamination" say what went.
MODEL_DIR also gets the model's config (flan_jax_config.json), so the run exports to
Hugging Face with `python -m flan_jax.models.convert --from_orbax=MODEL_DIR --to_hf=...`,
and the entry point's resolved configuration (config.gin). Nothing is written there
before the run holds MODEL_DIR's lock and its settings are checked against those the
directory recorded: a refused run leaves another run's record as it was.
"""

import dataclasses
import json
from typing import Mapping

import jax
from jax.sharding import Mesh
import seqio

from flan_jax import job, model_dir as model_dir_lib, paths
from flan_jax.data import chat_examples, chat_export, clusters, pipeline, registry
from flan_jax.data import run_decontamination
from flan_jax.errors import UserError, check_whole_number
from flan_jax.evaluation import evaluator
from flan_jax.evaluation.report import print_comparison
from flan_jax.models import convert
from flan_jax.models.config import ModelConfig
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.families import ModelFamily
from flan_jax.models.layer_stack import stack_layers
from flan_jax.models.lora import LoraConfig
from flan_jax.models.pretrained import load_pretrained
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import optimizer as optimizer_lib
from flan_jax.training import trainer as trainer_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training import metrics_writer
from flan_jax.training.metrics_writer import MetricsWriter
from flan_jax.training.run_lock import RunLock

def check_feature_lengths(lengths: Mapping[str, int]) -> None:
  """TASK_FEATURE_LENGTHS: {"inputs": tokens >= 0 (0: none, for plain text and
  conversations), "targets": tokens >= 1}."""
  if not isinstance(lengths, Mapping) or set(lengths) != {"inputs", "targets"}:
    raise UserError("TASK_FEATURE_LENGTHS must be a dict with keys 'inputs' and 'targets', e.g. "
                    f"{{'inputs': 512, 'targets': 128}}; got {lengths!r}.")
  check_whole_number("TASK_FEATURE_LENGTHS['inputs']", lengths["inputs"], 0)
  check_whole_number("TASK_FEATURE_LENGTHS['targets']", lengths["targets"], 1)


def check_same_model(model_dir: str, model: ModelConfig) -> None:
  """A run resumes only into the model it saved: other shapes cannot restore."""
  path = paths.join(model_dir, model_dir_lib.CONFIG_FILE)
  if not paths.isdir(paths.join(model_dir, model_dir_lib.CHECKPOINTS_DIR)) or not paths.exists(path):
    return
  saved = paths.read_json(path)
  # As JSON has it (LoRA's target list a list), to compare with what was written.
  current = json.loads(json.dumps({"family": convert.family(model), **dataclasses.asdict(model)}))
  # Compute settings may change between runs; the parameters' shapes, dtypes and
  # layout (scan_layers) may not, nor whether and how LoRA adapters are trained (a
  # config without "lora" had none).
  free = ("dtype", "remat_policy", "attention_implementation", "dropout_rate")
  recorded = lambda k, v: saved.get(k, None if k == "lora" else v)
  if saved.get("lora"):  # with the fields it was written without (their defaults)
    saved["lora"] = json.loads(json.dumps(dataclasses.asdict(LoraConfig(**saved["lora"]))))
  differ = [f"{k}={recorded(k, v)!r} (now {v!r})" for k, v in current.items()
            if k not in free and recorded(k, v) != v]
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
  recorded = paths.join(model_dir, model_dir_lib.TEMPLATE_FILE)
  if template is not None and paths.exists(recorded):
    before = chat_examples.load_template(recorded)
    if before != template:
      raise UserError(f"{recorded} records chat template {before.name!r}, but this run renders "
                      f"conversations with {template.name!r}: its checkpoints would answer "
                      "prompts in two formats. Use the recorded template, or a new MODEL_DIR.")
    held_out_file = paths.join(model_dir, model_dir_lib.HELD_OUT_FILE)
    held_out_before = model_dir_lib.read_json_or(held_out_file, {})
    for name, now in held_out.items():
      if name in held_out_before and held_out_before[name] != now:
        raise UserError(f"{held_out_file}: {name} held out "
                        f"{held_out_before[name]}, but this run holds out {now}: training "
                        "would read conversations it evaluated on, or the other way round. Use "
                        "the recorded setting, or a new MODEL_DIR.")
  return template, held_out


def _tasks_with_split(tasks: list[seqio.Task], split: str) -> list[seqio.Task]:
  return [t for t in tasks if evaluator.eval_split(t, split)]


def finetune(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    trainer: trainer_lib.TrainerConfig,
    model: ModelConfig = DecoderConfig(),
    optimizer: optimizer_lib.OptimizerConfig = optimizer_lib.OptimizerConfig(),
    heldout_mixture_or_task_name: str | None = None,
    evaluation: evaluator.EvalConfig = evaluator.EvalConfig(),
    evaluate_before: bool = True,
    initial_checkpoint_path: str | model_dir_lib.ResolvedCheckpoint | None = None,
    lora: LoraConfig | None = None,
    truncation_sample: int = 100,
    data_workers: int | None = None,
    config_gin: str | None = None,
    decontamination: "Decontamination | None" = None,
) -> dict[str, dict[str, float]]:
  """Evaluates, trains, evaluates again; returns {"before", "after", "groups"}. It holds
  MODEL_DIR's run lock throughout: a second run on it is refused.

  `truncation_sample`: examples per training task read before training to count and
  report prompts and targets that the run's lengths cut (0: skip the report).
  `data_workers`: processes that render and tokenize training examples (None: one per
  spare core on an accelerator, none on the CPU; the data is the same for any number).
  `config_gin`: the entry point's resolved configuration, recorded as MODEL_DIR/config.gin.
  `lora`: train LoRA adapters on the frozen model (the initial checkpoint, else a random
  one from the seed) instead of the whole model; MODEL_DIR records the base.
  `decontamination`: eval tasks every training example is checked against before
  training (`run_decontamination`); what it removed goes to
  MODEL_DIR/decontamination.json and into eval/heldout.json.
  """
  job.ensure_writable_dir(model_dir)
  with RunLock(model_dir, enabled=jax.process_index() == 0):
    # Set up, every setting checked before any evaluation: a setting's error should not
    # wait minutes.
    seen_tasks = registry.leaf_tasks(mixture_or_task_name)
    heldout_tasks = (registry.leaf_tasks(heldout_mixture_or_task_name)
                     if heldout_mixture_or_task_name else [])
    mesh, workers = _check_settings(task_feature_lengths, batch_size, trainer, data_workers)
    vocabulary = job.task_vocabulary(seen_tasks + heldout_tasks)
    initial = model_dir_lib.resolve(initial_checkpoint_path) if initial_checkpoint_path else None
    # LoRA bound on the model config (DecoderConfig.lora) counts too: a pretrained
    # checkpoint's architecture replaces that config, which would drop it unsaid.
    lora = lora or model.lora
    model, initial_params = starting_model(model, initial, vocabulary)
    if lora is not None:
      model = dataclasses.replace(model, lora=lora)  # checks its targets against the family
    network = job.network_for(model, vocabulary)
    _record_run(model_dir, model, initial, config_gin, seen_tasks + heldout_tasks, vocabulary)
    decontaminated = _decontaminate(model_dir, mixture_or_task_name, decontamination, trainer.seed)
    evaluate, groups = _evaluation(seen_tasks, heldout_tasks, evaluation, network, mesh,
                                   task_feature_lengths, vocabulary.eos_id)
    if jax.process_index() == 0 and truncation_sample:
      pipeline.report_truncation(seen_tasks, task_feature_lengths, inputs_eos=network.inputs_eos,
                                 examples_per_task=truncation_sample, seed=trainer.seed)

    # Evaluate, train, evaluate again. The evaluation curve in metrics.jsonl and
    # TensorBoard: before at step 0, every `trainer.eval_every` steps (the trainer), and
    # after at the last step.
    before = {}
    if evaluate_before and evaluate:
      # The parameters training starts from (the same seed), placed as training places them.
      before = evaluate(step_lib.place_params(network, mesh, task_feature_lengths,
                                              initial_params, seed=trainer.seed))
    _log_evaluation(model_dir, 0, before)
    # A decontaminated run trains on copies of the tasks that skip the removed records.
    batches = _batches(decontaminated.mixture if decontaminated else mixture_or_task_name,
                       task_feature_lengths, batch_size, trainer.seed, network, workers)
    state = trainer_lib.train(network, optimizer, trainer, batches, model_dir, task_feature_lengths,
                              initial_params=initial_params,
                              base_source=initial.path if initial else None,
                              evaluate=(lambda p: logged_means(evaluate(p))) if evaluate else None)
    after = evaluate(state.model_params) if evaluate else {}
    return _report(model_dir, trainer.train_steps, before, after, groups,
                   decontaminated.brief() if decontaminated else None)


@dataclasses.dataclass(frozen=True)
class Decontamination:
  """`against`: eval tasks and mixtures; `rule`: "13-gram" or "8-gram"
  (`decontamination_index.RULES`); `cache_dir`: where the eval index is kept (None:
  ~/.cache/flan_jax/decontamination)."""
  against: tuple[str, ...]
  rule: str = "13-gram"
  cache_dir: str | None = None


def _decontaminate(model_dir: str, mixture_or_task_name: str,
                   settings: Decontamination | None, seed: int):
  """The run's decontamination summary (its `mixture` is what to train on), or None."""
  if not settings or not settings.against:
    return None
  summary = run_decontamination.guard(mixture_or_task_name, settings.against, rule=settings.rule,
                                      seed=seed, cache_dir=settings.cache_dir)
  if jax.process_index() == 0:
    paths.write_json(paths.join(model_dir, model_dir_lib.DECONTAMINATION_FILE),
                     summary.to_dict(), indent=1)
  return summary


def _check_settings(task_feature_lengths: Mapping[str, int], batch_size: int,
                    trainer: trainer_lib.TrainerConfig, data_workers: int | None):
  """(training's mesh, the number of data workers), once the settings fit them."""
  check_feature_lengths(task_feature_lengths)
  workers = pipeline.default_workers(jax.default_backend()) if data_workers is None else data_workers
  if workers < 0:
    raise UserError(f"data_workers must be >= 0 (0: render examples in the training process), "
                    f"got {workers}.")
  mesh = mesh_lib.make_mesh(trainer.mesh_shape, dcn_shape=trainer.dcn_mesh_shape)
  mesh_lib.check_batch_fits(mesh, batch_size)
  if batch_size % trainer.microbatches:
    raise UserError(f"BATCH_SIZE={batch_size} does not split into microbatches="
                    f"{trainer.microbatches} equal slices.")
  return mesh, workers


def starting_model(model: ModelConfig,
                   initial: model_dir_lib.ResolvedCheckpoint | None,
                   vocabulary: seqio.Vocabulary):
  """(the model config, the initial checkpoint's parameters or None)."""
  initial_params = None
  if initial:
    # The checkpoint fixes the architecture; gin's model config keeps only how it runs.
    pretrained, initial_params = load_pretrained(initial)
    model = dataclasses.replace(pretrained, **{k: getattr(model, k) for k in _HOW_IT_RUNS})
    if model.scan_layers:  # checkpoints are stored one layer per subtree
      initial_params = stack_layers(initial_params)
    # The model may have more embedding rows than the tokenizer has ids: T5 pads its
    # 32,100 ids to 32,128 rows, Qwen2 its 151,665 to 151,936. No task produces those
    # ids, and generation and scoring mask them out (`num_token_ids`). Fewer rows than
    # ids cannot run the tasks' tokens at all.
    job.check_vocabulary_fits(model, vocabulary, initial.path)
  if not model.vocab_size:
    model = dataclasses.replace(model, vocab_size=vocabulary.vocab_size)
  return model, initial_params


def _record_run(model_dir: str, model: ModelConfig,
                initial: model_dir_lib.ResolvedCheckpoint | None, config_gin: str | None,
                tasks: list[seqio.Task], vocabulary: seqio.Vocabulary) -> None:
  """What MODEL_DIR keeps beside the checkpoints, for the tools that read a run.

  It is written only now, holding the lock, once this run's settings agree with what
  MODEL_DIR recorded: a refused run leaves the files of the run it would have resumed
  or disturbed as they were.
  """
  check_same_model(model_dir, model)
  template, held_out = _check_recorded_conversations(model_dir, tasks)
  if jax.process_index() != 0:  # one writer into the shared MODEL_DIR
    return
  if config_gin is not None:
    paths.write_atomically(paths.join(model_dir, model_dir_lib.CONFIG_GIN), config_gin)
  # So `convert --from_orbax=MODEL_DIR --to_hf=...` can export.
  convert.save_run_config(model_dir, model, initial)
  # Conversations: the template they were rendered with, for `infer --chat` and
  # `eval` to render prompts exactly so, and the records training never read.
  if template is not None:
    paths.write_atomically(paths.join(model_dir, model_dir_lib.TEMPLATE_FILE), template.to_json())
    paths.write_json(paths.join(model_dir, model_dir_lib.HELD_OUT_FILE), held_out, indent=1,
                     sort_keys=True)
    # The tokenizer, template and stop id a server needs, for the Hugging Face export.
    chat_export.write_served_files(paths.join(model_dir, model_dir_lib.HF_FILES_DIR), template,
                                   vocabulary)


def _evaluation(seen_tasks: list[seqio.Task], heldout_tasks: list[seqio.Task],
                evaluation: evaluator.EvalConfig, network: ModelFamily, mesh: Mesh,
                task_feature_lengths: Mapping[str, int], eos_id: int):
  """(the evaluation on training's mesh, None where no task has the split; the groups
  reported)."""
  # Inverted tasks (write the question from the answer) cannot be scored against labels.
  heldout_tasks = [t for t in heldout_tasks if clusters.is_evaluated(t.name)]
  eval_tasks = _tasks_with_split(heldout_tasks, evaluation.split)
  seen_eval_tasks = []
  if evaluation.evaluate_seen:
    # Per seen dataset, the task its score counts (see `job.report_groups`): a library
    # renders each dataset several ways, and evaluating all of them costs hours.
    headline = set(clusters.headline_tasks([t.name for t in seen_tasks]))
    seen_eval_tasks = [t for t in _tasks_with_split(seen_tasks, evaluation.split)
                       if t.name in headline]
    eval_tasks = seen_eval_tasks + eval_tasks
  groups = job.report_groups([t.name for t in seen_eval_tasks], [t.name for t in heldout_tasks])
  if not eval_tasks:
    return None, groups
  return job.MeshEvaluation(network, mesh, eval_tasks, task_feature_lengths, eos_id, evaluation,
                            groups), groups


def _batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             batch_size: int, seed: int, network: ModelFamily, workers: int):
  """This process's share of the training stream, from a start step (and saved state)."""
  def batches(start_step: int, state=None):
    return pipeline.train_batches(
        mixture_or_task_name, task_feature_lengths, batch_size, seed=seed,
        shard_index=jax.process_index(), num_shards=jax.process_count(), skip_batches=start_step,
        encoder_decoder=network.encoder_decoder, bos_id=network.bos_id,
        inputs_eos=network.inputs_eos, state=state, workers=workers)
  return batches


def _report(model_dir: str, step: int, before: dict[str, float], after: dict[str, float],
            groups: dict[str, list[str]], decontamination: dict | None = None) -> dict:
  """Logs `after` at the last step, records and prints the comparison; returns
  {"before", "after", "groups"}, and for a decontaminated run "decontamination":
  against what, by which rule, and how many examples went (absent: not decontaminated,
  so a run without it records exactly what it always did)."""
  _log_evaluation(model_dir, step, after)
  results = {"before": before, "after": after, "groups": groups}
  if decontamination:
    results["decontamination"] = decontamination
  if jax.process_index() == 0:
    paths.write_json(paths.join(model_dir, model_dir_lib.RESULTS_FILE), results, indent=2,
                     sort_keys=True)
    if before or after:  # a run without evaluation tasks (conversations) has no table
      print_comparison(before, after, groups)
      if decontamination:
        print(_decontamination_line(decontamination))
  return results


def _decontamination_line(decontamination: dict) -> str:
  return (f"Training data decontaminated against {', '.join(decontamination['against'])} "
          f"({decontamination['rule']} rule): {decontamination['removed']:,} of "
          f"{decontamination['checked']:,} examples removed.")


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

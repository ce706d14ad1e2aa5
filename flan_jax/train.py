r"""Finetune a model on a seqio mixture: `python -m flan_jax.train --gin_file=...`.

  python -m flan_jax.train --gin_file=gin/quickstart.gin \
      --gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=100

gin configures `train` below; see gin/quickstart.gin for every setting.
"""

import os
from typing import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter (CUDA probing)

from absl import flags
import gin
import jax

from flan_jax import finetune, gin_utils, job, model_dir as model_dir_lib, preference_finetune
from flan_jax.errors import UserError
from flan_jax.data import mixtures
from flan_jax.data.chat_examples import ChatTask
from flan_jax.data.text_examples import TextTask
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.models import families
from flan_jax.models.config import ModelConfig
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.lora import LoraConfig
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig
from flan_jax_tasks.library.instruct import InstructionFile

gin_utils.define_flags("TRAIN_STEPS = 100")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Multi-host without explicit flags: call "
                  "jax.distributed.initialize() and let JAX find the cluster (Cloud TPU, "
                  "Slurm, Open MPI).")
FLAGS = flags.FLAGS

gin_utils.configurables(*families.config_classes().values(), OptimizerConfig, EvalConfig,
                        ChatTask, TextTask, InstructionFile, LoraConfig,
                        preference_finetune.PreferenceConfig, preference_finetune.PreferenceData)


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str | None = None,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    heldout_mixture_or_task_name: str | None = None,
    data_dir: str | None = None,
    model: ModelConfig | None = None,
    optimizer: OptimizerConfig | None = None,
    evaluation: EvalConfig | None = None,
    checkpoint_every: int = 500,
    eval_every: int = 0,
    microbatches: int = 1,
    label_smoothing: float = 0.0,
    loss_chunk_length: int = 512,
    prefetch: int = 2,
    data_workers: int | None = None,
    log_every: int = 10,
    z_loss: float = 1e-4,
    spike_factor: float | None = 10.0,
    spike_warmup: int = 10,
    spike_action: str = "stop",
    peak_flops_per_device: float | None = None,
    seed: int = 0,
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    evaluate_before: bool = True,
    initial_checkpoint_path: str | None = None,
    lora: LoraConfig | None = None,
    vocabulary_path: str | None = None,
    truncation_sample: int = 100,
    chat_tasks: Sequence[ChatTask] = (),
    text_tasks: Sequence[TextTask] = (),
    instruction_files: Sequence[InstructionFile] = (),
    mixture_parts: Mapping[str, float] | None = None,
    preference: preference_finetune.PreferenceConfig | None = None,
    decontaminate_against: Sequence[str] = (),
    decontamination_rule: str = "13-gram",
    decontamination_cache_dir: str | None = None,
):
  """The whole job; see `finetune.finetune`.

  `eval_every` (gin's EVAL_PERIOD): evaluate during training every this many steps,
  into metrics.jsonl and TensorBoard as eval/<mean> (0: only before and after).
  `microbatches`: accumulate each step's gradient over this many slices of the batch.
  `loss_chunk_length`: rows longer than this get their loss this many positions at a
  time, never holding the whole batch's float32 logits (0: all at once).
  `prefetch`: batches made and copied to the devices ahead, on a background thread.
  `data_workers`: processes that render and tokenize examples (None: one per spare core,
  up to 8, on an accelerator; none on the CPU, whose cores run the model).
  `mesh_shape`: (data, fsdp, tensor) over all devices; with `dcn_mesh_shape`, over each
  TPU slice's (or GPU host's) devices, and `dcn_mesh_shape` over the slices or hosts.
  `spike_factor`: a step whose loss or gradient norm (judged after `spike_warmup`
  steps) or weights' norm (from the first step) exceeds this many times its median over
  the last 100 steps is a spike (None: none is). `spike_action`: "stop" stops the run,
  keeping only checkpoints from before the spike; "skip" leaves the weights as they
  were for that step, counts it, and goes on.
  `peak_flops_per_device`: one device's peak FLOP/s, for the MFU logged (None: known
  accelerators' from a table; others log no MFU).

  `lora` (`train.lora = @LoraConfig()`): train LoRA adapters on the frozen initial
  checkpoint instead of the whole model; checkpoints then hold only the adapters and
  MODEL_DIR/lora_base.json records the base they belong to.

  `vocabulary_path` (a SentencePiece .model, a tokenizer.json, or a directory with
  one) is what the task library tokenizes with; by default the initial checkpoint's
  own tokenizer when it has one, else bytes. `chat_tasks` (`ChatTask`s: conversation
  files) and `text_tasks` (`TextTask`s: plain text, every token trained) are registered
  with that vocabulary, to be named in the mixture, as are `instruction_files`
  (`InstructionFile`s: Alpaca-format files as FLAN-style tasks). `mixture_parts`
  ({task or mixture: weight}) registers `mixture_or_task_name` as their mixture: instruction data with
  some plain text, say.

  `preference` (a `PreferenceConfig`) makes the objective preference optimization
  (DPO, IPO, hinge, SimPO, ORPO) on its pairs instead of finetuning on a mixture;
  see `preference_finetune` and gin/dpo_quickstart.gin. With `lora` the policy is
  LoRA adapters on the frozen starting weights, and by default the reference is that
  base with the adapters switched off (`PreferenceConfig.reference = 'base'`).

  `decontaminate_against` (eval task and mixture names, e.g. ['mmlu_0shot',
  'bbh_direct', 'gsm8k']): before training, every training example sharing text with
  them is removed, by `decontamination_rule` ("13-gram": any shared word 13-gram;
  "8-gram": open-instruct's, shared 8-grams covering over half an eval text). Counts
  per task go to the log and MODEL_DIR/decontamination.json; the eval index is cached
  in `decontamination_cache_dir` (None: ~/.cache/flan_jax/decontamination).
  """
  gin_utils.check_command_line_bindings_used()
  trainer = TrainerConfig(train_steps=train_steps, checkpoint_every=checkpoint_every,
                          log_every=log_every, z_loss=z_loss, seed=seed,
                          mesh_shape=tuple(mesh_shape), eval_every=eval_every,
                          dcn_mesh_shape=dcn_mesh_shape and tuple(dcn_mesh_shape),
                          microbatches=microbatches, label_smoothing=label_smoothing,
                          loss_chunk_length=loss_chunk_length, prefetch=prefetch,
                          spike_factor=spike_factor, spike_warmup=spike_warmup,
                          spike_action=spike_action,
                          peak_flops_per_device=peak_flops_per_device)
  if preference is not None:
    ignored = [name for name, value in [
        ("mixture_or_task_name", mixture_or_task_name),
        ("heldout_mixture_or_task_name", heldout_mixture_or_task_name), ("data_dir", data_dir),
        ("chat_tasks", chat_tasks), ("text_tasks", text_tasks),
        ("instruction_files", instruction_files), ("mixture_parts", mixture_parts),
        ("evaluation", evaluation), ("decontaminate_against", decontaminate_against)]
        if value]
    if ignored:
      raise UserError(f"train.preference is set, so the run trains on its pairs, but "
                      f"{', '.join('train.' + n for n in ignored)} is set too and would be "
                      "ignored. Unset it, or unset train.preference to finetune instead.")
    if getattr(model, "lora", None) is not None:
      # The starting checkpoint's config replaces gin's model config, which would drop it.
      raise UserError("train.model.lora is set in a preference run, where the starting "
                      "checkpoint's config replaces the model config and would drop it: "
                      "set train.lora = @LoraConfig() instead for a LoRA policy.")
    finetune.check_feature_lengths(task_feature_lengths)
    return preference_finetune.run(
        model_dir=model_dir, preference=preference, task_feature_lengths=task_feature_lengths,
        batch_size=batch_size, trainer=trainer, model=model or DecoderConfig(),
        optimizer=optimizer or OptimizerConfig(), initial_checkpoint_path=initial_checkpoint_path,
        vocabulary_path=vocabulary_path, evaluate_before=evaluate_before,
        config_gin=gin.config_str(), lora=lora)
  if not mixture_or_task_name:
    raise UserError("MIXTURE_OR_TASK_NAME is not set: name the task or mixture to finetune on "
                    "(or set train.preference for preference optimization).")
  initial = initial_checkpoint_path and model_dir_lib.resolve(initial_checkpoint_path)
  job.register_tasks(data_dir, vocabulary_path, initial or None,
                     [*chat_tasks, *text_tasks, *instruction_files])
  if mixture_parts:
    mixtures.register_weighted_mixture(mixture_or_task_name, mixture_parts)
  return finetune.finetune(
      model_dir=model_dir,
      mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=task_feature_lengths,
      batch_size=batch_size,
      trainer=trainer,
      model=model or DecoderConfig(),
      optimizer=optimizer or OptimizerConfig(),
      heldout_mixture_or_task_name=heldout_mixture_or_task_name,
      evaluation=evaluation or EvalConfig(),
      evaluate_before=evaluate_before,
      initial_checkpoint_path=initial or None,  # resolved once, above
      lora=lora,
      truncation_sample=truncation_sample,
      data_workers=data_workers,
      # Recorded once the run holds MODEL_DIR and agrees with what it recorded before.
      config_gin=gin.config_str(),
      decontamination=finetune.Decontamination(
          (decontaminate_against,) if isinstance(decontaminate_against, str)
          else tuple(decontaminate_against), decontamination_rule, decontamination_cache_dir)
      if decontaminate_against else None,
  )


def _join_cluster() -> None:
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


# Config errors before joining the cluster: a process that fails after joining makes
# the others wait minutes for it before they exit too.
main = gin_utils.main_calling(train, before=_join_cluster)


if __name__ == "__main__":
  gin_utils.run_main(main)

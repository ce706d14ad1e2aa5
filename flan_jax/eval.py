r"""Evaluate a checkpoint on a task, a mixture or a held-out cluster, or run the benchmark
suite: `python -m flan_jax.eval`.

  python -m flan_jax.eval --gin_file=gin/eval.gin \
      --gin.CHECKPOINT_PATH=/tmp/flan_jax_quickstart --gin.MIXTURE_OR_TASK_NAME=default_heldout
  python -m flan_jax.eval --gin_file=gin/suite.gin --gin.CHECKPOINT_PATH=DIR
  python -m flan_jax.eval --gin_file=gin/eval.gin --gin.CHECKPOINT_PATH=BASE --adapter=DIR \
      --gin.MIXTURE_OR_TASK_NAME=default_heldout

CHECKPOINT_PATH may be a LoRA run's MODEL_DIR (its recorded base is loaded with it);
--adapter (or `evaluate.adapter_path`) puts a PEFT adapter directory or a LoRA run's
adapters on top of the base CHECKPOINT_PATH.

gin configures `evaluate` below (see gin/eval.gin, gin/suite.gin); the job is
`checkpoint_eval.evaluate_checkpoint`, or with `evaluate.suite` set, `suite.run_suite`.
"""

import dataclasses
import os
from typing import Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402
import gin  # noqa: E402

from flan_jax import checkpoint_eval, gin_utils, model_dir, suite as suite_lib  # noqa: E402
from flan_jax.data.chat_examples import ChatTask  # noqa: E402
from flan_jax.errors import UserError  # noqa: E402
from flan_jax.evaluation.evaluator import EvalConfig  # noqa: E402
from flan_jax.evaluation.humaneval import HumanEvalConfig  # noqa: E402
from flan_jax.llm_judge import JudgeConfig  # noqa: E402
from flan_jax.suite import SuiteConfig  # noqa: E402

gin_utils.define_flags('MIXTURE_OR_TASK_NAME = "x"')
gin_utils.configurables(EvalConfig, ChatTask, SuiteConfig, HumanEvalConfig, JudgeConfig)
flags.DEFINE_string("judge_endpoint", None, "The suite's LLM judge: an OpenAI-compatible "
                    "server's base URL (with --judge_model).")
flags.DEFINE_string("judge_model", None, "The model name the --judge_endpoint serves.")
if "adapter" not in flags.FLAGS:  # infer defines the same flag: both may load in one process
  flags.DEFINE_string("adapter", None, "LoRA adapters on top of the checkpoint: a PEFT adapter "
                      "directory or a LoRA run's MODEL_DIR.")
flags.DEFINE_string("judge_checkpoint", None, "The suite's LLM judge: any checkpoint eval "
                    "loads, run locally.")


def judge_from_flags(suite: SuiteConfig) -> SuiteConfig:
  """The suite with --judge_* flags, where given, as its judge (over SuiteConfig.judge)."""
  given = _judge_flags()
  if not given:
    return suite
  return dataclasses.replace(suite, judge=dataclasses.replace(suite.judge or JudgeConfig(),
                                                              **given))


def _judge_flags() -> dict:
  """The --judge_* flags given on the command line, as JudgeConfig fields."""
  if not flags.FLAGS.is_parsed():
    return {}
  given = {"endpoint": flags.FLAGS.judge_endpoint, "model": flags.FLAGS.judge_model,
           "checkpoint": flags.FLAGS.judge_checkpoint}
  return {field: value for field, value in given.items() if value is not None}


def _adapter_flag() -> str | None:
  """--adapter where given (it wins over `evaluate.adapter_path`)."""
  return flags.FLAGS.adapter if flags.FLAGS.is_parsed() else None


@gin.configurable
def evaluate(
    checkpoint_path: str = gin.REQUIRED,
    mixture_or_task_name: str | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    output_dir: str = gin.REQUIRED,
    step: int | None = None,
    evaluation: EvalConfig | None = None,
    data_dir: str | None = None,
    vocabulary_path: str | None = None,
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    chat_tasks=(),
    suite: SuiteConfig | None = None,
    log_samples: bool = False,
    adapter_path: str | None = None,
) -> dict:
  """See `checkpoint_eval.evaluate_checkpoint`; the mesh shapes as for `train`.

  `chat_tasks`: `ChatTask`s to name in MIXTURE_OR_TASK_NAME, rendered with the
  checkpoint's recorded chat template (leave `ChatTask.template` unset).
  `suite`: run the benchmark suite instead of one mixture (`suite.run_suite`).
  `log_samples`: also write per-example records (`evaluate.log_samples=True`).
  `adapter_path`: LoRA adapters on top of `checkpoint_path` (then the base): a PEFT
  adapter directory or a LoRA run's MODEL_DIR (`models.adapters`); --adapter sets it.
  """
  gin_utils.check_command_line_bindings_used()
  checkpoint = model_dir.resolve(checkpoint_path, adapter=_adapter_flag() or adapter_path)
  if suite is not None:
    suite = judge_from_flags(suite)
    if mixture_or_task_name is not None:
      raise UserError("Set either evaluate.suite (gin/suite.gin) or MIXTURE_OR_TASK_NAME "
                      "(gin/eval.gin), not both.")
    # Settings of a one-mixture evaluation the suite would not use (each member has its
    # own lengths in SuiteConfig.task_feature_lengths).
    unused = [name for name, value in [("log_samples", log_samples), ("chat_tasks", chat_tasks),
                                       ("task_feature_lengths", task_feature_lengths)] if value]
    if unused:
      raise UserError(f"evaluate.{unused[0]} is for evaluating one mixture (gin/eval.gin); the "
                      "suite does not use it: unset it.")
    return suite_lib.run_suite(
        checkpoint, output_dir, suite.task_feature_lengths, members=suite.members,
        style=suite.style, step=step, evaluation=evaluation, data_dir=data_dir,
        vocabulary_path=vocabulary_path, member_settings=suite.member_settings(),
        mesh_shape=tuple(mesh_shape), dcn_mesh_shape=dcn_mesh_shape and tuple(dcn_mesh_shape))
  if _judge_flags():
    raise UserError("--judge_endpoint/--judge_model/--judge_checkpoint give the suite's judge "
                    "(gin/suite.gin); this run evaluates one mixture and has no judged member.")
  if mixture_or_task_name is None or task_feature_lengths is None:
    raise UserError("Nothing to evaluate: set MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS "
                    "(gin/eval.gin), or run the suite (--gin_file=gin/suite.gin).")
  return checkpoint_eval.evaluate_checkpoint(
      checkpoint, mixture_or_task_name, task_feature_lengths, output_dir, step=step,
      evaluation=evaluation, data_dir=data_dir, vocabulary_path=vocabulary_path,
      mesh_shape=tuple(mesh_shape), dcn_mesh_shape=dcn_mesh_shape and tuple(dcn_mesh_shape),
      chat_tasks=tuple(chat_tasks), log_samples=log_samples)


main = gin_utils.main_calling(evaluate)


if __name__ == "__main__":
  gin_utils.run_main(main)

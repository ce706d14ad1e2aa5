r"""Evaluate a checkpoint on a task, a mixture or a held-out cluster: `python -m flan_jax.eval`.

  python -m flan_jax.eval --gin_file=gin/eval.gin \
      --gin.CHECKPOINT_PATH=/tmp/flan_jax_quickstart --gin.MIXTURE_OR_TASK_NAME=default_heldout

gin configures `evaluate` below (see gin/eval.gin); the job is
`checkpoint_eval.evaluate_checkpoint`.
"""

import os
from typing import Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402

from flan_jax import checkpoint_eval, gin_utils  # noqa: E402
from flan_jax.data.chat_examples import ChatTask  # noqa: E402
from flan_jax.evaluation.evaluator import EvalConfig  # noqa: E402

gin_utils.define_flags('MIXTURE_OR_TASK_NAME = "x"')
gin_utils.configurables(EvalConfig, ChatTask)


@gin.configurable
def evaluate(
    checkpoint_path: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    step: int | None = None,
    evaluation: EvalConfig | None = None,
    data_dir: str | None = None,
    vocabulary_path: str | None = None,
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    chat_tasks=(),
    log_samples: bool = False,
) -> dict:
  """See `checkpoint_eval.evaluate_checkpoint`; the mesh shapes as for `train`.

  `chat_tasks`: `ChatTask`s to name in MIXTURE_OR_TASK_NAME, rendered with the
  checkpoint's recorded chat template (leave `ChatTask.template` unset).
  `log_samples`: also write per-example records (`evaluate.log_samples=True`).
  """
  gin_utils.check_command_line_bindings_used()
  return checkpoint_eval.evaluate_checkpoint(
      checkpoint_path, mixture_or_task_name, task_feature_lengths, output_dir, step=step,
      evaluation=evaluation, data_dir=data_dir, vocabulary_path=vocabulary_path,
      mesh_shape=tuple(mesh_shape), dcn_mesh_shape=dcn_mesh_shape and tuple(dcn_mesh_shape),
      chat_tasks=tuple(chat_tasks), log_samples=log_samples)


main = gin_utils.main_calling(evaluate)


if __name__ == "__main__":
  gin_utils.run_main(main)

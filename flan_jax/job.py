"""What train, eval and infer set up alike, written once.

- MODEL_DIR (or OUTPUT_DIR) proven writable, once per job, before any expensive work.
- The tasks: the task library and conversation / plain-text files, registered with
  VOCABULARY_PATH, else the checkpoint's own tokenizer, else bytes; the one vocabulary
  a job's tasks share, and a checkpoint with a row for each of its ids.
- The model family for a config and a vocabulary.
- Evaluation on training's mesh: parameters in training's layout, each batch's rows
  split over the data axes and the hosts, and the group means.
- One rule for the groups a mean averages (`report_groups`); `eval` reports the same
  groups of its one set of tasks under its own names (`eval_groups`).
"""

import dataclasses
import os
import socket
from typing import Any, Callable, Mapping, Sequence

from jax.sharding import Mesh
import seqio

from flan_jax import paths
from flan_jax.data import clusters, vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator, placement
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.model_dir import ResolvedCheckpoint
from flan_jax.models import families
from flan_jax.models.config import ModelConfig
from flan_jax.models.families import ModelFamily
from flan_jax.training import mesh as mesh_lib


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


def _register(task, vocabulary: seqio.Vocabulary) -> None:
  task.register(vocabulary)


def register_tasks(data_dir: str | None, vocabulary_path: str | None,
                   checkpoint: ResolvedCheckpoint | None, file_tasks: Sequence = (),
                   register: Callable[[Any, seqio.Vocabulary], None] = _register) -> None:
  """Registers the task library (tasks/library, from `data_dir`) and tasks read from
  files (`ChatTask`, `TextTask`: `register(task, vocabulary)`), tokenized with
  `vocabulary_path`, else the checkpoint's own tokenizer, else the library's default
  (bytes for the files)."""
  if not data_dir and not file_tasks:
    return
  vocabulary = vocabularies.library_vocabulary(vocabulary_path,
                                               checkpoint and checkpoint.tokenizer_dir)
  if data_dir:
    from flan_jax_tasks import library
    library.register(data_dir, vocabulary)
  for task in file_tasks:
    register(task, vocabulary or vocabularies.byte_vocabulary())


def task_vocabulary(tasks: list[seqio.Task]) -> seqio.Vocabulary:
  """The one vocabulary every task shares (a clear error when they differ)."""
  vocabulary = tasks[0].output_features["targets"].vocabulary
  others = [t.name for t in tasks if t.output_features["targets"].vocabulary != vocabulary]
  if others:
    raise UserError(f"All tasks must share one vocabulary, but {others} differ from "
                    f"{tasks[0].name}'s.")
  return vocabulary


def check_vocabulary_fits(model: ModelConfig, vocabulary: seqio.Vocabulary,
                          checkpoint_path: str) -> None:
  """A checkpoint needs an embedding row for every id the tasks' tokenizer produces."""
  if model.vocab_size < vocabulary.vocab_size:
    raise UserError(
        f"The tasks' vocabulary has {vocabulary.vocab_size} ids but the checkpoint at "
        f"{checkpoint_path} has only {model.vocab_size} embedding rows: register the "
        "tasks with the model's own tokenizer (its tokenizer.model or tokenizer.json; for "
        "the task library, --gin.VOCABULARY_PATH=...).")


def network_for(config: ModelConfig, vocabulary: seqio.Vocabulary) -> ModelFamily:
  """The model family running `config` on `vocabulary`'s ids (those beyond it masked)."""
  return families.family_for(config, bos_id=vocabularies.bos_id(vocabulary),
                             num_token_ids=vocabulary.vocab_size)


@dataclasses.dataclass(frozen=True)
class MeshEvaluation:
  """`tasks` evaluated on training's mesh, with the means of `groups`; parameters come
  already placed in training's layout (`train_step.place_params`)."""
  network: ModelFamily
  mesh: Mesh
  tasks: Sequence[seqio.Task]
  task_feature_lengths: Mapping[str, int]
  eos_id: int
  config: EvalConfig
  groups: Mapping[str, Sequence[str]]
  max_length: int | None = None  # the model's position limit, where known (`evaluator`)
  samples: dict | None = None  # receives per-example records (`evaluator.evaluate_tasks`)

  def __call__(self, params) -> dict[str, float]:
    rows = placement.sharded_rows(mesh_lib.batch_sharding(self.mesh))
    model = evaluator.make_eval_model(self.network, params, self.task_feature_lengths,
                                      self.eos_id, self.config.batch_size, placement=rows,
                                      max_length=self.max_length, add_bos=self.config.add_bos)
    with mesh_lib.on_mesh(self.mesh):
      results = evaluator.evaluate(list(self.tasks), model, self.config, self.samples)
    return {**results, **evaluator.group_means(results, self.groups)}


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


def eval_groups(task_names: list[str]) -> dict[str, list[str]]:
  """`report_groups` of one set of tasks, as `eval` names them: `all` (FLAN's score),
  one per cluster (`cluster_<name>`), then one per variant (`variant_<name>`). The order
  matters: a task in several groups is shown under the last."""
  groups = report_groups([], task_names)
  variants = {f"variant_{name.removeprefix('heldout_')}": groups.pop(name)
              for name in list(groups) if name.startswith("heldout_")}
  return {"all": groups.pop("heldout", []), **groups, **variants}

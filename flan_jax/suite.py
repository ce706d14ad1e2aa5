"""The evaluation suite: every benchmark of the papers' tables on one checkpoint, with one
command (`python -m flan_jax.eval --gin_file=gin/suite.gin --gin.CHECKPOINT_PATH=DIR`).

The checkpoint is loaded and placed on the mesh once; each member
(`suite_members.MEMBERS`) then evaluates with it and its own TASK_FEATURE_LENGTHS.
A member whose data is missing is skipped with one line saying where to put it.

Written under OUTPUT_DIR/eval/:
- `suite/<member>.json`, as each member finishes: its metrics, per-task results, how
  they were scored, and the settings it ran with (checkpoint and its step, style,
  EvalConfig, lengths, the member's own settings). A rerun with the same settings reads
  it back instead of evaluating, so an interrupted suite resumes after its last
  finished member; other settings re-evaluate (a log line says which changed).
- `suite.json`: the style, each member's metrics, headline, scoring and settings, the
  skipped members and why, the plain `average` of the headlines (Tulu's) and FLAN-T5's
  `normalized_average` with the members it covers (`evaluation.suite_report`).
- `suite.png`: a bar per benchmark and average. The table is printed.
"""

import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Sequence

from jax.experimental import multihost_utils
import jax
import numpy as np
import tqdm

from flan_jax import checkpoint_eval, job, model_dir, paths
from flan_jax.data import vocabularies
from flan_jax.errors import UserError, closest_names
from flan_jax.evaluation import suite_report
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.evaluation.humaneval import HumanEvalConfig
from flan_jax.suite_members import MEMBERS, STYLES, Member, SuiteContext

JUDGED = ("alpaca_eval", "mt_bench")  # the members that take SuiteConfig.judge

log = logging.getLogger(__name__)

SUITE_DIR = "suite"  # under OUTPUT_DIR/eval/
NAME = "suite"


def check_members(names: Sequence[str]) -> list[Member]:
  unknown = [n for n in names if n not in MEMBERS]
  if unknown:
    close = closest_names(unknown[0], MEMBERS)
    raise UserError(f"SUITE names {unknown[0]!r}, which is no suite member"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; the members are {sorted(MEMBERS)}.")
  if not names:
    raise UserError(f"SUITE is empty; name members, e.g. ['mmlu', 'gsm8k'], from {sorted(MEMBERS)}.")
  return [MEMBERS[n] for n in dict.fromkeys(names)]


def _jsonable(value: Any) -> Any:
  """Settings as JSON would read them back (dataclasses as dicts, tuples as lists)."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {"type": type(value).__name__, **_jsonable(dataclasses.asdict(value))}
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def checkpoint_step(checkpoint: model_dir.ResolvedCheckpoint, step: int | None) -> int | None:
  """The step a run directory's evaluation reads (its latest, unless asked); None for a
  single checkpoint. Recorded so that a run that trained on is evaluated afresh. With a
  LoRA run as the adapter, the step is the adapter run's."""
  run = checkpoint.adapter_run or (checkpoint.directory if checkpoint.kind == "run" else None)
  if step is not None or run is None:
    return step
  steps = model_dir.finished_steps(paths.join(run, model_dir.CHECKPOINTS_DIR))
  return max(steps) if steps else None


def _changed(old: Mapping, new: Mapping) -> list[str]:
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _read_finished(path: str, settings: Mapping, name: str) -> dict | None:
  """A member's earlier result when it ran with `settings`, else None (logged)."""
  if not paths.exists(path):
    return None
  try:
    earlier = paths.read_json(path)
  except ValueError:
    log.warning("suite: %s is not JSON (a cut write?); evaluating %s again.", path, name)
    return None
  if earlier.get("settings") == settings:
    log.info("suite: %s finished earlier with the same settings; reading %s.", name, path)
    return earlier
  log.warning("suite: %s ran earlier with other settings (%s differ); evaluating it again.",
              name, ", ".join(_changed(earlier.get("settings", {}), settings)))
  return None


def run_suite(
    checkpoint_path: str | model_dir.ResolvedCheckpoint,
    output_dir: str,
    task_feature_lengths: Mapping[str, Mapping[str, int]],
    *,
    members: Sequence[str] | None = None,
    style: str = "lm_eval",
    step: int | None = None,
    evaluation: EvalConfig | None = None,
    data_dir: str | None = None,
    vocabulary_path: str | None = None,
    member_settings: Mapping[str, Mapping[str, Any]] | None = None,
    mesh_shape: tuple[int, ...] = (-1, 1, 1),
    dcn_mesh_shape: tuple[int, ...] | None = None,
) -> dict:
  """Runs the suite's `members` (default: all) on the checkpoint; returns suite.json
  (in process 0; the other processes of a multi-host job return {}).

  `task_feature_lengths`: member -> its TASK_FEATURE_LENGTHS. `member_settings`: member
  -> its own settings (`{"mmlu": {"shots": 0}, "humaneval": {"config": HumanEvalConfig()}}`).
  `checkpoint_path` may be resolved with an adapter beside it (`model_dir.resolve`).
  """
  evaluation = evaluation or EvalConfig()
  member_settings = member_settings or {}
  chosen = check_members(list(members) if members is not None else list(MEMBERS))
  if style not in STYLES:
    raise UserError(f"suite style {style!r} is not one of {list(STYLES)}.")
  checkpoint = model_dir.resolve(checkpoint_path)
  if not paths.isdir(checkpoint.directory):
    raise UserError(f"CHECKPOINT_PATH {checkpoint.path!r} is not a directory.")
  job.ensure_writable_dir(output_dir)
  directory = paths.join(output_dir, model_dir.EVAL_DIR)
  data_dir = data_dir and os.path.abspath(os.path.expanduser(data_dir))

  skipped, pending, finished = {}, [], {}
  for member in chosen:
    settings = member_settings.get(member.name, {})
    reason = member.missing(data_dir, settings)
    if reason:
      skipped[member.name] = reason
      log.warning("suite: %s skipped, %s", member.name, reason)
      continue
    if member.name not in task_feature_lengths:
      raise UserError(f"suite member {member.name!r} has no TASK_FEATURE_LENGTHS: add "
                      f"'{member.name}': {{'inputs': ..., 'targets': ...}} to "
                      "SuiteConfig.task_feature_lengths (see gin/suite.gin).")
    recorded = _jsonable({
        "checkpoint": checkpoint.directory, "step": checkpoint_step(checkpoint, step),
        "style": style, "evaluation": evaluation, "data_dir": data_dir,
        "vocabulary_path": vocabulary_path,
        "task_feature_lengths": task_feature_lengths[member.name], "member": settings,
        # An adapter makes another model: its results are not the base's (recorded only
        # when given, so records from before adapters still count).
        **({"adapter": checkpoint.adapter} if checkpoint.adapter else {})})
    earlier = _read_finished(paths.join(directory, SUITE_DIR, f"{member.name}.json"), recorded,
                             member.name)
    if earlier is None:
      pending.append((member, recorded))
    else:
      finished[member.name] = earlier

  pending, finished = _agreed([m.name for m in chosen], pending, finished)
  model = None
  if pending:
    # The task library tokenized with the checkpoint's own tokenizer (or VOCABULARY_PATH),
    # as `train` and `eval` tokenize it; the model loaded once for every member.
    job.register_tasks(data_dir, vocabulary_path, checkpoint)
    vocabulary = (vocabularies.library_vocabulary(vocabulary_path, checkpoint.tokenizer_dir)
                  or vocabularies.default_vocabulary())
    longest = {key: max(task_feature_lengths[m.name][key] for m, _ in pending)
               for key in ("inputs", "targets")}
    model = checkpoint_eval.load_model(checkpoint, vocabulary, longest, step=step,
                                       mesh_shape=mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
  for member, recorded in tqdm.tqdm(pending, desc="suite", unit="benchmark", dynamic_ncols=True,
                                    disable=jax.process_index() != 0):
    finished[member.name] = _run_member(member, recorded, model, data_dir, style, evaluation,
                                        member_settings.get(member.name, {}),
                                        task_feature_lengths[member.name], directory)

  if jax.process_index() != 0:
    return {}  # process 0 holds every record, and reports
  report = {"checkpoint": checkpoint.directory,
            **({"adapter": checkpoint.adapter} if checkpoint.adapter else {}),
            **summarize([m for m in chosen if m.name in finished], finished, skipped, style)}
  paths.write_json(paths.join(directory, f"{NAME}.json"), report, indent=2, sort_keys=True)
  columns = table_columns(chosen, report)
  title = f"suite ({style} style): {checkpoint.name}"
  suite_report.print_suite_table(title, os.path.basename(checkpoint.directory.rstrip("/")),
                                 columns, [f"{n} skipped: {r}" for n, r in skipped.items()])
  values = [(name, value) for name, value in columns if value is not None]
  if values:
    suite_report.plot_suite(values, title, paths.join(directory, f"{NAME}.png"))
  return report


def _agreed(order: Sequence[str], pending: list, finished: dict) -> tuple[list, dict]:
  """What process 0 (which writes the records) found unfinished, evaluated by every
  process: all of them take part in each evaluation, whatever their own disks hold.
  Both lists follow the suite's order, the same in every process."""
  if jax.process_count() == 1:
    return pending, finished
  recorded = {m.name: (m, r) for m, r in pending}
  names = [name for name in order if name in recorded or name in finished]
  unfinished = multihost_utils.broadcast_one_to_all(
      np.asarray([name in recorded for name in names], np.int32))
  return ([recorded.get(name) or (MEMBERS[name], None)
           for name, todo in zip(names, unfinished) if todo],
          {name: finished.get(name) for name, todo in zip(names, unfinished) if not todo})


def _run_member(member: Member, recorded: dict, model, data_dir, style, evaluation,
                settings, lengths, directory) -> dict:
  context = SuiteContext(model, data_dir, style, lengths, evaluation, settings, directory)
  start = time.monotonic()
  metrics = member.evaluate(context)
  if member.headline not in metrics:
    raise UserError(f"suite member {member.name!r} returned no {member.headline!r} (its "
                    f"headline metric); it returned {sorted(metrics)}.")
  result = {"metrics": {k: float(v) for k, v in metrics.items()}, "scoring": context.scoring,
            "results": context.results, "details": context.details, "settings": recorded,
            "seconds": round(time.monotonic() - start, 1)}
  if jax.process_index() == 0:
    paths.write_json(paths.join(directory, SUITE_DIR, f"{member.name}.json"), result, indent=2,
                     sort_keys=True)
  return result


def summarize(members: Sequence[Member], finished: Mapping[str, dict],
              skipped: Mapping[str, str], style: str) -> dict:
  """suite.json: per member its metrics, headline and settings; both averages."""
  entries, normalized = {}, {}
  for member in members:
    result = finished[member.name]
    metrics = result["metrics"]
    entries[member.name] = {"title": member.title, "headline": member.headline,
                            "value": metrics[member.headline], "metrics": metrics,
                            "scoring": result["scoring"], "settings": result["settings"]}
    if member.in_normalized_average:
      metric = member.normalized_metric or member.headline
      normalized[member.name] = (metrics[metric],
                                 metrics.get("random_baseline", member.random_baseline))
  headlines = [entries[m.name]["value"] for m in members if m.in_average]
  return {"style": style, "members": entries, "skipped": dict(skipped),
          "average": suite_report.average(headlines),
          "normalized_average": suite_report.normalized_average(normalized),
          "normalized_average_members": sorted(normalized)}


def table_columns(chosen: Sequence[Member], report: Mapping) -> list[tuple[str, float | None]]:
  columns = [(m.title, report["members"].get(m.name, {}).get("value")) for m in chosen]
  return columns + [("Average", report["average"]), ("Norm. avg.", report["normalized_average"])]


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """What `python -m flan_jax.eval` runs as the suite (gin/suite.gin binds it)."""
  members: Sequence[str] = tuple(MEMBERS)
  style: str = "lm_eval"  # 'lm_eval' or 'flan' (the `<mixture>_flan` variants)
  # member -> its TASK_FEATURE_LENGTHS
  task_feature_lengths: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
  mmlu_shots: int = 5  # 5 (lm-eval's and the papers' default) or 0
  humaneval: Any = None  # a HumanEvalConfig; None: greedy pass@1
  # The judge of alpaca_eval and mt_bench (an llm_judge.JudgeConfig; eval's --judge_*
  # flags set it); without one they are skipped with a line saying so.
  judge: Any = None
  # Any member's own settings, member -> {name: value} (e.g. a judge for an
  # LLM-as-judge member); they reach it as `context.settings` and are recorded.
  settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

  def member_settings(self) -> dict[str, dict[str, Any]]:
    settings = {name: dict(values) for name, values in self.settings.items()}
    settings.setdefault("mmlu", {}).setdefault("shots", self.mmlu_shots)
    settings.setdefault("humaneval", {}).setdefault("config", self.humaneval or HumanEvalConfig())
    for judged in JUDGED:
      settings.setdefault(judged, {}).setdefault("judge", self.judge)
    return settings

"""Self-Instruct: a teacher model grows an instruction pool from a few seed tasks.

The procedure of Wang et al. (2023), step by step:

1. Instructions. Each request shows the teacher 8 instructions from the pool, 6 drawn
   from the seed tasks and 2 from those generated so far (seeds fill in while fewer
   than 2 exist), numbered 1 to 8, and leaves "9." for it to continue the list. Every
   numbered item of the completion is a candidate (the text before the first number
   is item 9). A candidate is kept when it passes `instruction_filters` (length,
   keywords, first character, and ROUGE-L below 0.7 against everything in the pool,
   including instructions kept earlier in the same step).
2. Classification. A kept instruction asking for one of a few labels is recognised,
   by a keyword rule (`classify_with="keywords"`, the default: deterministic, and the
   only sensible choice for a weak teacher) or by asking the teacher few-shot, as the
   paper does (`"teacher"`).
3. Instances. Classification tasks are asked output first (a class label, then an
   input of that class), so the labels do not follow whatever inputs the teacher
   likes to write; other tasks input first. Demonstrations are seed tasks of the same
   kind. Instances with an empty output, repeats of an earlier instance, and (given
   an n-gram index of evaluation data) those sharing an n-gram with it are dropped;
   an instruction left with none is dropped.

Every rejection is counted by reason (`SelfInstructReport.rejected`) and the report is
written beside the data. Output is Alpaca-format JSONL (`{instruction, input, output}`,
one line per instance), which `ChatTask` (format "alpaca") reads.

Resuming. The teacher is a `flan_jax.evaluation.judge.Judge` with a disk cache in the
output directory, keyed by the request's text; the run is deterministic given its
seed and the teacher's answers. A rerun therefore replays the interrupted run from
the cache, asking the teacher nothing it already answered, rewrites the same records,
and carries on. The price: a prompt repeated word for word gets the cached answer, so
a sampling teacher is not asked the same thing twice (with 8 of 175+ instructions
drawn per request, a repeat is rare).
"""

import dataclasses
import json
import logging
import os
import random
import re
from typing import Callable, Protocol, Sequence

import tqdm

from flan_jax.data import instruction_filters as filters
from flan_jax.data import record_files
from flan_jax.errors import UserError

OUTPUT_FILE = "self_instruct.jsonl"
REPORT_FILE = "report.json"
CACHE_DIR = "teacher_cache"
CHAT_GIN = "chat_task.gin"
TASK_GIN = "task.gin"
_NUMBERED = re.compile(r"(?:^|\n)[ \t]*\d{1,3}[ \t]*[.)][ \t]*")
_NO_INPUT = {"", "<noinput>", "(none)", "none", "n/a", "<no input>"}


class ContaminationIndex(Protocol):
  """Evaluation text n-grams (`decontamination_index.DecontaminationIndex`, or
  `decontamination.NgramIndex`)."""

  def matches(self, text: str, first_only: bool = False) -> list:
    ...


class Teacher(Protocol):
  """What generates text: one completion per prompt (`flan_jax.evaluation.judge.Judge`)."""

  def complete(self, prompts: Sequence[str]) -> list[str]:
    ...


@dataclasses.dataclass(frozen=True)
class SeedTask:
  instruction: str
  instances: tuple[tuple[str, str], ...]  # (input, output)
  is_classification: bool


def read_seed_tasks(path: str) -> list[SeedTask]:
  """Self-Instruct's seed file: JSONL `{instruction, instances: [{input, output}],
  is_classification}`; a broken line is one error naming it."""
  seeds = []
  for number, record in record_files.json_lines(record_files.read_bytes(path)):
    where = f"{path}:{number}"
    if isinstance(record, record_files.JsonError):
      raise UserError(f"{where}: {record}; write one JSON object per line.")
    if not isinstance(record, dict) or not isinstance(record.get("instruction"), str) \
        or not record["instruction"].strip():
      raise UserError(f"{where}: needs a non-empty string 'instruction' (a seed task: "
                      "{instruction, instances: [{input, output}], is_classification}).")
    instances = record.get("instances", [])
    if not isinstance(instances, list) or not all(
        isinstance(i, dict) and isinstance(i.get("output"), str)
        and isinstance(i.get("input", ""), str) for i in instances):
      raise UserError(f"{where}: 'instances' must be a list of {{input, output}} strings.")
    seeds.append(SeedTask(filters.clean(record["instruction"]),
                          tuple((i.get("input", ""), i["output"]) for i in instances),
                          bool(record.get("is_classification", False))))
  if not seeds:
    raise UserError(f"{path}: no seed tasks in it.")
  return seeds


def instruction_prompt(instructions: Sequence[str]) -> str:
  """The paper's prompt: a numbered list left open at the next number."""
  lines = ["Come up with a series of tasks:"]
  lines += [f"{k}. {filters.clean(text).rstrip(':')}" for k, text in
            enumerate(instructions, 1)]
  return "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(completion: str) -> list[str]:
  """The candidates in a completion of `instruction_prompt`: the text up to the first
  numbered line (the open item), then each numbered item; cleaned, empty ones kept
  (the `empty` filter counts them)."""
  return [filters.clean(item) for item in _NUMBERED.split(completion)]


def _input_text(text: str) -> str:
  return "(none)" if not text.strip() else text.strip()


def instance_prompt(instruction: str, demonstrations: Sequence[SeedTask],
                    output_first: bool) -> str:
  """Asks for instances of `instruction` after seed demonstrations of the same kind."""
  if output_first:
    head = ("Here are classification tasks. For each, write a class label it can give, "
            "then an input that belongs to that class; repeat for other labels.")
  else:
    head = ("Here are tasks with examples. For each, write an input (or (none) when the "
            "task needs none), then the correct output; give several examples if you can.")
  blocks = [head]
  for seed in demonstrations:
    lines = [f"Task: {seed.instruction}"]
    for input_text, output in seed.instances:
      if output_first:
        lines += [f"Class label: {output.strip()}", f"Input: {_input_text(input_text)}"]
      else:
        lines += [f"Input: {_input_text(input_text)}", f"Output: {output.strip()}"]
    blocks.append("\n".join(lines))
  blocks.append(f"Task: {instruction}\n" + ("Class label:" if output_first else ""))
  return "\n\n".join(blocks)


def parse_instances(completion: str, output_first: bool) -> list[tuple[str, str]]:
  """(input, output) pairs from a completion of `instance_prompt`; stops at the next
  "Task:" (the teacher inventing another task).

  Output first, the completion starts inside a "Class label:" field. Input first, it
  starts after the task line: "Input: ... Output: ..." blocks, or, as the prompt
  allows for a task that needs no input, an output alone ("Output: ..." or plain text).
  """
  text = completion.split("\nTask:")[0]
  first, second = ("Class label:", "Input:") if output_first else ("Input:", "Output:")
  if output_first:
    text = first + " " + text
  elif first not in text:
    _, found, tail = text.partition(second)
    return [("", (tail if found else text).strip())]
  pairs = []
  for block in re.split(rf"(?:^|\n)\s*{re.escape(first)}", text)[1:]:
    head, found, tail = block.partition(second)
    if not found:
      continue  # no second field: not an instance
    head, tail = head.strip(), tail.strip()
    input_text, output = (tail, head) if output_first else (head, tail)
    pairs.append(("" if input_text.lower() in _NO_INPUT else input_text, output))
  return pairs


def classification_prompt(instruction: str, seeds: Sequence[SeedTask]) -> str:
  """The paper's few-shot question: is this a task with a finite set of output labels?"""
  lines = ["Can the following task be regarded as a classification task with finite "
           "output labels?", ""]
  for seed in seeds:
    lines += [f"Task: {seed.instruction}",
              f"Is it classification? {'Yes' if seed.is_classification else 'No'}", ""]
  lines += [f"Task: {instruction}", "Is it classification?"]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SelfInstructConfig:
  """`num_instructions`: instructions to write (each with its instances).
  `requests_per_step`: instruction requests sent to the teacher together (one batch).
  `max_requests`: give up after this many instruction requests (default 20 per
  instruction wanted), so a teacher whose every idea is filtered cannot loop forever.
  `max_instances`: instances kept per instruction (further ones counted as surplus).
  `demonstrations`: seed tasks shown in each instance request.
  """
  num_instructions: int = 100
  requests_per_step: int = 8
  seed_per_request: int = 6
  generated_per_request: int = 2
  rouge_threshold: float = filters.THRESHOLD
  min_words: int = filters.MIN_WORDS
  max_words: int = filters.MAX_WORDS
  classify_with: str = "keywords"
  max_instances: int = 3
  demonstrations: int = 3
  classification_examples: int = 12
  max_requests: int | None = None
  seed: int = 0

  def __post_init__(self):
    if self.classify_with not in ("keywords", "teacher"):
      raise UserError(f"classify_with={self.classify_with!r}; use 'keywords' or 'teacher'.")
    if self.num_instructions < 1 or self.requests_per_step < 1 or self.max_instances < 1:
      raise UserError("num_instructions, requests_per_step and max_instances must be >= 1.")


@dataclasses.dataclass
class SelfInstructReport:
  instructions_kept: int = 0
  records_written: int = 0
  classification_tasks: int = 0
  instruction_requests: int = 0
  instance_requests: int = 0
  classification_requests: int = 0
  candidates: int = 0
  # Passed every filter in the step that reached num_instructions, but not needed: in
  # the pool (and the cache), not written.
  beyond_target: int = 0
  rejected: dict[str, int] = dataclasses.field(
      default_factory=lambda: {name: 0 for name in (*filters.FILTERS, "no_instances",
                                                    "empty_instance", "duplicate_instance",
                                                    "contaminated_instance",
                                                    "surplus_instance")})
  # Per evaluation task: instances dropped for sharing an n-gram with it.
  contaminated_by: dict[str, int] = dataclasses.field(default_factory=dict)
  stopped_early: bool = False

  def instructions_rejected(self) -> int:
    return sum(self.rejected[name] for name in (*filters.FILTERS, "no_instances"))


def generate(seeds: Sequence[SeedTask], teacher: Teacher, output_dir: str,
             config: SelfInstructConfig = SelfInstructConfig(), *, progress: bool = True,
             on_step: Callable[[SelfInstructReport], None] | None = None,
             contamination: ContaminationIndex | None = None) -> SelfInstructReport:
  """Runs the loop until `config.num_instructions` are written to
  `output_dir/self_instruct.jsonl`, with `report.json` beside it; returns the report.

  `contamination`: an n-gram index of evaluation data (`decontamination_index.eval_index`);
  an instance whose instruction, input and output together share an n-gram with it is
  dropped and counted per evaluation task, before anything is written.
  """
  os.makedirs(output_dir, exist_ok=True)
  rng = random.Random(config.seed)
  pool = filters.RougePool((s.instruction for s in seeds), config.rouge_threshold)
  ordinary = [s for s in seeds if not s.is_classification and s.instances]
  labelled = [s for s in seeds if s.is_classification and s.instances]
  if not ordinary or not labelled:
    raise UserError("The seed tasks need instances of both kinds (is_classification true "
                    "and false) to demonstrate instance generation.")
  generated: list[str] = []
  report = SelfInstructReport()
  max_requests = config.max_requests or 20 * config.num_instructions
  path = os.path.join(output_dir, OUTPUT_FILE)
  bar = tqdm.tqdm(total=config.num_instructions, desc="instructions", unit="instr",
                  disable=not progress)
  with open(path, "w", encoding="utf-8") as out:  # a resumed run rewrites what it replays
    while report.instructions_kept < config.num_instructions:
      if report.instruction_requests >= max_requests:
        report.stopped_early = True
        logging.warning("Self-Instruct: stopping after %d instruction requests with %d of %d "
                        "instructions; see %s for what the filters rejected.",
                        report.instruction_requests, report.instructions_kept,
                        config.num_instructions, REPORT_FILE)
        break
      prompts = [instruction_prompt(_examples(rng, seeds, generated, config))
                 for _ in range(config.requests_per_step)]
      report.instruction_requests += len(prompts)
      new = _filter_candidates(teacher.complete(prompts), pool, report, config,
                               config.num_instructions - report.instructions_kept)
      for instruction, instances, is_classification in _with_instances(
          new, teacher, rng, ordinary, labelled, seeds, report, config, contamination):
        generated.append(instruction)
        report.instructions_kept += 1
        report.classification_tasks += is_classification
        for input_text, output in instances:
          out.write(json.dumps({"instruction": instruction, "input": input_text,
                                "output": output}, ensure_ascii=False) + "\n")
          report.records_written += 1
      out.flush()
      bar.n = report.instructions_kept
      bar.set_postfix(kept=report.instructions_kept, rejected=report.instructions_rejected())
      bar.refresh()
      _write_report(output_dir, report, config)
      if on_step:
        on_step(report)
  bar.close()
  _write_report(output_dir, report, config)
  return report


def _examples(rng: random.Random, seeds: Sequence[SeedTask], generated: Sequence[str],
              config: SelfInstructConfig) -> list[str]:
  machine = rng.sample(generated, min(config.generated_per_request, len(generated)))
  total = config.seed_per_request + config.generated_per_request
  human = [s.instruction for s in rng.sample(seeds, min(total - len(machine), len(seeds)))]
  return human + machine  # the teacher continues after the generated ones, as in the paper


def _filter_candidates(completions: Sequence[str], pool: filters.RougePool,
                       report: SelfInstructReport, config: SelfInstructConfig,
                       wanted: int) -> list[str]:
  kept = []
  for completion in completions:
    for candidate in parse_instructions(completion):
      report.candidates += 1
      problem = filters.text_problem(candidate, config.min_words, config.max_words)
      if problem is None and pool.too_similar(candidate):
        problem = "rouge"
      if problem:
        report.rejected[problem] += 1
        continue
      pool.add(candidate)
      if len(kept) < wanted:
        kept.append(candidate)
      else:
        report.beyond_target += 1
  return kept


def _with_instances(instructions: Sequence[str], teacher: Teacher, rng: random.Random,
                    ordinary: Sequence[SeedTask], labelled: Sequence[SeedTask],
                    seeds: Sequence[SeedTask], report: SelfInstructReport,
                    config: SelfInstructConfig, contamination: ContaminationIndex | None):
  """(instruction, instances, is_classification) of those that got instances."""
  if not instructions:
    return
  if config.classify_with == "teacher":
    examples = rng.sample(list(seeds), min(config.classification_examples, len(seeds)))
    answers = teacher.complete([classification_prompt(i, examples) for i in instructions])
    report.classification_requests += len(instructions)
    kinds = [answer.strip().lower().startswith("yes") for answer in answers]
  else:
    kinds = [filters.looks_like_classification(i) for i in instructions]
  prompts = []
  for instruction, is_classification in zip(instructions, kinds):
    source = labelled if is_classification else ordinary
    shown = rng.sample(list(source), min(config.demonstrations, len(source)))
    prompts.append(instance_prompt(instruction, shown, output_first=is_classification))
  report.instance_requests += len(prompts)
  for instruction, is_classification, completion in zip(instructions, kinds,
                                                         teacher.complete(prompts)):
    instances = _clean_instances(instruction, parse_instances(completion, is_classification),
                                 report, config.max_instances, contamination)
    if not instances:
      report.rejected["no_instances"] += 1
      continue
    yield instruction, instances, is_classification


def _clean_instances(instruction: str, pairs: Sequence[tuple[str, str]],
                     report: SelfInstructReport, limit: int,
                     contamination: ContaminationIndex | None) -> list[tuple[str, str]]:
  kept, seen = [], set()
  for input_text, output in pairs:
    matches = contamination.matches("\n".join([instruction, input_text, output]),
                                    first_only=True) if contamination else []
    if not output.strip():
      report.rejected["empty_instance"] += 1
    elif (input_text, output) in seen:
      report.rejected["duplicate_instance"] += 1
    elif matches:
      report.rejected["contaminated_instance"] += 1
      for source in matches[0].sources:
        report.contaminated_by[source] = report.contaminated_by.get(source, 0) + 1
    elif len(kept) >= limit:
      report.rejected["surplus_instance"] += 1
    else:
      seen.add((input_text, output))
      kept.append((input_text, output))
  return kept


def _write_report(output_dir: str, report: SelfInstructReport,
                  config: SelfInstructConfig) -> None:
  content = {"report": dataclasses.asdict(report),
             "instructions_rejected": report.instructions_rejected(),
             "config": dataclasses.asdict(config)}
  temporary = os.path.join(output_dir, REPORT_FILE + ".tmp")
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(content, f, indent=2)
  os.replace(temporary, os.path.join(output_dir, REPORT_FILE))


def write_chat_gin(output_dir: str, name: str = "self_instruct") -> str:
  """Writes `chat_task.gin`: one `--gin_file` (or `include`) registers the output as a
  chat task named `name` for `train`; returns its path.

  The path goes through CHAT_DATA, the macro the chat configs (gin/chat_quickstart.gin)
  read their data from, so added after one of them it replaces that data rather than
  leaving the macro unused (which gin_utils reports as an error).
  """
  data = os.path.abspath(os.path.join(output_dir, OUTPUT_FILE))
  text = (f"# Self-Instruct data as a chat task (one user turn, one reply per record). Add\n"
          f"# --gin_file=this file to a train command, and train on {name!r} alone\n"
          f"# (--gin.train.mixture_or_task_name=\"'{name}'\") or in train.mixture_parts.\n"
          f"CHAT_DATA = {data!r}\n"
          f"train.chat_tasks = [@{name}/ChatTask()]\n"
          f"{name}/ChatTask.name = {name!r}\n"
          f"{name}/ChatTask.path = %CHAT_DATA\n"
          f"{name}/ChatTask.format = 'alpaca'\n")
  path = os.path.join(output_dir, CHAT_GIN)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def write_task_gin(output_dir: str, name: str = "self_instruct") -> str:
  """Writes `task.gin`: one `--gin_file` registers the output for `train` as a FLAN-style
  task named `name` (`InstructionFile`: the task library's Alpaca templates, zero- and
  few-shot); returns its path."""
  data = os.path.abspath(os.path.join(output_dir, OUTPUT_FILE))
  text = (f"# Self-Instruct data as a FLAN-style task: add --gin_file=this file to a train\n"
          f"# command and name the mixture {name!r} (its variants) in\n"
          f"# MIXTURE_OR_TASK_NAME or train.mixture_parts.\n"
          f"train.instruction_files = [@{name}/InstructionFile()]\n"
          f"{name}/InstructionFile.name = {name!r}\n"
          f"{name}/InstructionFile.path = {data!r}\n")
  path = os.path.join(output_dir, TASK_GIN)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path

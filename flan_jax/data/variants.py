"""FLAN's prompt variants of one record: zero-shot, few-shot, chain-of-thought, options, inversion.

FLAN 2022 found that mixing these formats is what makes instruction tuning transfer:
zero-shot and few-shot prompts, answer options shown or not, chain-of-thought, and
"input inversion" (asking for the question given the answer). Each `Variant` turns
a record into `(inputs, targets, template_idx)` with a `random.Random` that the
caller seeds per example, so every rendering is deterministic for a seed.

Edge cases the rules settle:
- Few-shot exemplars come from the train split and are never the example itself
  (when rendering the train split, the example's own index is excluded). Exemplars
  are dropped, last first, until the prompt fits the token budget (the task's own
  cap, if any, then the run's input length, see `flan_task`); with none left the
  prompt is the zero-shot one.
- Options come from a record field (a list) or from a fixed list for the task. The
  fixed "OPTIONS:" block is FLAN's canonical format; `randomize_options` draws one
  of several phrasings per example instead, so the model does not latch onto one.
- Chain-of-thought and inversion are zero-shot renderings with their own templates:
  CoT targets are "<rationale> So the answer is <answer>." (`cot_template`) and
  `extract_answer` reads the answer back for evaluation.
"""

import dataclasses
import random
import re
from typing import Any, Callable, Mapping, Sequence

from flan_jax.data.templates import Template

Record = Mapping[str, Any]
TokenCounter = Callable[[str], int]

EXEMPLAR_SEPARATOR = "\n\n"

# Our own option phrasings; "{options}" is the rendered list.
OPTION_FORMATS = (
    ("OPTIONS:\n", "- {option}", "\n"),
    ("Options:\n", "({letter}) {option}", "\n"),
    ("Choose from: ", "{option}", ", "),
    ("Possible answers:\n", "{number}. {option}", "\n"),
    ("Pick one of the following: ", "\"{option}\"", " / "),
    ("Select the best answer:\n", "[{letter}] {option}", "\n"),
)


def format_options(options: Sequence[str], style: int = 0) -> str:
  """The options block in one of OPTION_FORMATS (style 0 is FLAN's fixed "OPTIONS:")."""
  header, item, joiner = OPTION_FORMATS[style]
  lines = [item.format(option=o, letter=chr(ord("A") + i), number=i + 1)
           for i, o in enumerate(options)]
  return header + joiner.join(lines)


_ANSWER_PATTERN = re.compile(r"answer is[:\s]*(.+?)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)


def extract_answer(text: str) -> str:
  """The answer after the last "answer is" in a chain-of-thought, else the whole text."""
  text = text.strip()
  cut = text.lower().rfind("answer is")
  if cut < 0:
    return text
  match = _ANSWER_PATTERN.search(text[cut:])
  return match.group(1).strip() if match else text


@dataclasses.dataclass(frozen=True)
class Variant:
  """How to render a record; subclasses implement `render`."""
  name: str
  templates: tuple[Template, ...]

  def render(self, record: Record, rng: random.Random, **context) -> tuple[str, str, int]:
    raise NotImplementedError


def _pick(templates: Sequence[Template], rng: random.Random) -> tuple[Template, int]:
  index = rng.randrange(len(templates))
  return templates[index], index


def _with_options(inputs: str, options: Sequence[str] | None, style: int | None) -> str:
  if not options or style is None:
    return inputs
  return f"{inputs}\n\n{format_options(options, style)}"


@dataclasses.dataclass(frozen=True)
class ZeroShot(Variant):
  """One template; options appended (fixed or random format) when `options_style` is set."""
  options_style: str | None = None  # None: no options; "fixed"; "random"

  def _style(self, rng: random.Random) -> int | None:
    if self.options_style is None:
      return None
    return 0 if self.options_style == "fixed" else rng.randrange(len(OPTION_FORMATS))

  def render_with(self, template: Template, record: Record, options, style) -> tuple[str, str]:
    inputs, targets = template.render(record)
    return _with_options(inputs, options, style), targets

  def render(self, record, rng, *, options=None, **context):
    template, index = _pick(self.templates, rng)
    inputs, targets = self.render_with(template, record, options, self._style(rng))
    return inputs, targets, index


@dataclasses.dataclass(frozen=True)
class FewShot(ZeroShot):
  """k exemplars from the train split rendered with the query's template, then the query."""
  k: int = 3
  token_budget: int | None = None  # a cap of the task's own; the run's input length also applies

  def render(self, record, rng, *, options=None, exemplars: Sequence[Record] = (),
             options_of: Callable[[Record], Sequence[str] | None] = lambda r: None,
             count_tokens: TokenCounter = len, **context):
    template, index = _pick(self.templates, rng)
    style = self._style(rng)
    query, targets = self.render_with(template, record, options, style)
    shots = []
    for exemplar in exemplars[:self.k]:
      shot_inputs, shot_targets = self.render_with(template, exemplar, options_of(exemplar), style)
      shots.append(f"{shot_inputs}\n{shot_targets}")
    while (shots and self.token_budget is not None
           and count_tokens(EXEMPLAR_SEPARATOR.join([*shots, query])) > self.token_budget):
      shots.pop()
    return EXEMPLAR_SEPARATOR.join([*shots, query]), targets, index


def cot_template(inputs: str) -> Template:
  """A chain-of-thought template: `inputs`, answered by "{rationale} So the answer is {answer}."."""
  return Template(inputs, "{rationale} So the answer is {answer}.")

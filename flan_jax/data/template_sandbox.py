"""A Jinja sandbox that bounds what one rendering may cost: time, characters, sizes.

jinja2's sandbox keeps a template away from files, code and mutation, but not from
spending: two nested `range(100000)` loops run for hours, `'a' * 10**10` asks for
10 GB at once. Chat templates are code a model's tokenizer_config.json or a user
brings, and a run renders every conversation several times, so each rendering here
runs under `RenderLimits`:

- a time budget, read at every loop iteration, call, filter, operator and piece of
  output, so a template stuck in a loop stops within one step of its deadline (the
  for-loops compile through `paced`, which the generated code calls);
- a cap on the characters written, and on the length of every string or list the
  template makes: before the fact for what could ask for gigabytes at once (`*` and
  `**`, integer arguments such as a width or a count, widths written into `%` and
  `format` strings), after it for what at most adds two capped values (`+`, `~`, a
  call's or a filter's result), so nothing much larger than the cap is ever held;
- a cap on `range`, jinja2's own (100 000 items) by default.

Going past a limit raises `LimitExceeded`; so does running out of memory. Other
failures are the template's own (ZeroDivisionError, UndefinedError, SecurityError,
RecursionError, ...) and propagate as they are, for the caller to name.

Not bounded: one call given two values at the cap can still make their product
(`sep.join(items)`, `text.replace('', long)`); text a `{% set %}` or `{% filter %}`
block buffers is measured when it is used, not while it grows. Neither occurs by
accident in a chat template.
"""

import dataclasses
import functools
import itertools
import re
import threading
import time
from typing import Any, Iterable, Iterator

import jinja2
import jinja2.compiler
import jinja2.nodes
import jinja2.sandbox

from flan_jax.errors import UserError

_MAX_INT_BITS = 1 << 14  # ~4900 digits: more than any count or id a template needs


@dataclasses.dataclass(frozen=True)
class RenderLimits:
  seconds: float = 10.0  # wall-clock time of one rendering
  max_chars: int = 1 << 26  # characters written; also the most any string or list may hold
  max_range: int = jinja2.sandbox.MAX_RANGE  # items of one range()


DEFAULT_LIMITS = RenderLimits()


class LimitExceeded(UserError):
  """A rendering went past one of its `RenderLimits` (or ran out of memory)."""


class _Budget:
  """One rendering's deadline and characters written, checked by every step."""

  def __init__(self, limits: RenderLimits, clock: bool = True):
    self.limits = limits
    self.deadline = time.monotonic() + limits.seconds if clock else float("inf")
    self.written = 0

  def tick(self) -> None:
    if time.monotonic() > self.deadline:
      raise LimitExceeded(f"rendering took more than {self.limits.seconds:g} s")

  def write(self, piece: str) -> None:
    self.tick()
    self.written += len(piece)
    if self.written > self.limits.max_chars:
      raise LimitExceeded(f"the template wrote more than {self.limits.max_chars} characters")

  def check_length(self, length: int, text: bool, made_by: str = "") -> None:
    if length > self.limits.max_chars:
      kind, unit = ("a string", "characters") if text else ("a collection", "items")
      raise LimitExceeded(f"{made_by}{kind} of {length} {unit}, more than the "
                          f"{self.limits.max_chars} a rendering may hold")

  def check_size(self, value: Any) -> Any:
    """`value`, if no larger than a rendering may hold."""
    if isinstance(value, (str, list, tuple, dict)):
      self.check_length(len(value), isinstance(value, str))
    elif isinstance(value, int):
      _check_int_bits(value.bit_length())
    return value

  def check_count(self, value: Any, callee: str) -> None:
    # A width or a repeat count: `'a'.ljust(n)` allocates n characters before returning.
    if isinstance(value, int) and not isinstance(value, bool) and value > self.limits.max_chars:
      raise LimitExceeded(f"{callee} was given {value}, over the {self.limits.max_chars} "
                          "characters a rendering may hold")

  def check_format(self, format_string: str) -> None:
    # '%9999999999s' and '{:>9999999999}' pad to a width written into the string itself.
    digits = len(str(self.limits.max_chars))
    for width in re.findall(rf"\d{{{digits},}}", format_string):
      self.check_count(int(width), "a format string")


_IDLE = _Budget(DEFAULT_LIMITS, clock=False)  # outside a rendering: compile-time folding
_local = threading.local()  # the budget of the rendering under way in this thread


def _budget() -> _Budget:
  return getattr(_local, "budget", None) or _IDLE


def _check_int_bits(bits: int) -> None:
  if bits > _MAX_INT_BITS:
    raise LimitExceeded(f"an integer of {bits} bits, over the {_MAX_INT_BITS} a rendering "
                        "may make")


def _range(*args: int) -> range:
  numbers = range(*args)
  if len(numbers) > _budget().limits.max_range:
    raise LimitExceeded(f"a range of {len(numbers)} items, more than the "
                        f"{_budget().limits.max_range} allowed")
  return numbers


def _limited_filter(name: str, function):
  @functools.wraps(function)  # keeps jinja2's pass_context/pass_environment marks
  def limited(*args, **kwargs):
    budget = _budget()
    budget.tick()
    for value in itertools.chain(args, kwargs.values()):
      budget.check_count(value, f"the {name} filter")
    if name == "format" and args and isinstance(args[0], str):
      budget.check_format(args[0])
    return budget.check_size(function(*args, **kwargs))
  return limited


class _LimitedCodeGenerator(jinja2.compiler.CodeGenerator):
  """Compiles every for-loop to iterate through `environment.paced`, and every `~`
  through `environment.sized`: the two steps the sandbox's own hooks do not see."""

  def visit_For(self, node, frame):
    paced = jinja2.nodes.EnvironmentAttribute("paced", lineno=node.iter.lineno)
    node.iter = jinja2.nodes.Call(paced, [node.iter], [], None, None, lineno=node.iter.lineno)
    node.iter.set_environment(self.environment)
    super().visit_For(node, frame)

  def visit_Concat(self, node, frame):
    self.write("environment.sized(")
    super().visit_Concat(node, frame)
    self.write(")")


class LimitedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
  """jinja2's immutable sandbox, each rendering (`render`) under `RenderLimits`."""

  code_generator_class = _LimitedCodeGenerator
  intercepted_binops = frozenset({"*", "**", "+", "%"})

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.globals["range"] = _range
    # Random text would make the training text differ at each rendering.
    del self.globals["lipsum"]
    self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}

  def paced(self, iterable: Iterable) -> Iterator:
    """The items of a for-loop, each after a look at the clock."""
    budget = _budget()
    for item in iterable:
      budget.tick()
      yield item

  def sized(self, value: Any) -> Any:
    return _budget().check_size(value)

  def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
    budget = _budget()
    budget.tick()
    if operator == "*":
      _check_product(budget, left, right)
    elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
      _check_int_bits(left.bit_length() * right)
    elif operator == "%" and isinstance(left, str):
      budget.check_format(left)
    return budget.check_size(super().call_binop(context, operator, left, right))

  def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's own naming)
    budget = _budget()
    budget.tick()
    if __obj is not _range:  # a range checks its own size
      callee = getattr(__obj, "__name__", "a call")
      for value in itertools.chain(args, kwargs.values()):
        budget.check_count(value, f"{callee}()")
    return budget.check_size(super().call(__context, __obj, *args, **kwargs))

  def wrap_str_format(self, value: Any):
    wrapped = super().wrap_str_format(value)
    if wrapped is not None:
      _budget().check_format(value.__self__)
    return wrapped


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_product(budget: _Budget, left: Any, right: Any) -> None:
  """Refuses `left * right` before it is computed if it would be too large."""
  if _is_int(left) and _is_int(right):
    _check_int_bits(left.bit_length() + right.bit_length())
    return
  for sequence, count in ((left, right), (right, left)):
    if isinstance(sequence, (str, list, tuple)) and _is_int(count):
      budget.check_length(len(sequence) * max(count, 0), isinstance(sequence, str),
                          "'*' would make ")


def render(template: jinja2.Template, limits: RenderLimits = DEFAULT_LIMITS,
           **variables: Any) -> str:
  """The template's text, rendered under `limits` (LimitExceeded past any of them)."""
  budget = _Budget(limits)
  outer, _local.budget = getattr(_local, "budget", None), budget
  try:
    pieces = []
    for piece in template.generate(**variables):
      budget.write(piece)
      pieces.append(piece)
    return "".join(pieces)
  except MemoryError:
    raise LimitExceeded("the rendering ran out of memory") from None
  finally:
    _local.budget = outer

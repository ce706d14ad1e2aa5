"""Errors that reach the user as one clear line instead of a traceback."""

import difflib
import numbers
import sys
from typing import Callable, Iterable


class UserError(Exception):
  """Bad input from the user: the entry point prints the message and exits non-zero."""


class Interrupted(Exception):
  """The run was asked to stop (SIGTERM, SIGINT) and saved where it was: the entry point
  prints the message and exits with the signal's conventional status (128 + signal)."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.exit_code = 128 + signal_number


def closest_names(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
  """The registered names most similar to `name`, best first."""
  candidates = sorted(set(candidates))
  close = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.5)
  if close:
    return close
  # Nothing similar by edit distance: fall back to names sharing a prefix word.
  stem = name.split("_")[0]
  return [c for c in candidates if c.startswith(stem)][:limit]


def check_whole_number(name: str, value, at_least: int) -> None:
  """A count setting (steps, a batch size, a length) must be an integer >= `at_least`: a
  gin binding or a JSON field can hand over anything (TRAIN_STEPS=abc), and a count
  below its minimum would fail later, far from the setting, or silently do nothing."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < at_least:
    raise UserError(f"{name} must be a whole number of at least {at_least}, got {value!r}.")


def exit_on_user_error(main: Callable) -> Callable:
  """Wraps an absl `main`: a UserError becomes one `error:` line and exit status 2; an
  Interrupted run prints where it stopped and exits with 128 + the signal."""
  # gin appends "In call to configurable ..." lines to what a configurable raises: the
  # first line says it all.
  def guarded(argv):
    try:
      return main(argv)
    except Interrupted as e:
      print(str(e).splitlines()[0], file=sys.stderr)
      sys.exit(e.exit_code)
    except UserError as e:
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
      sys.exit(2)
  return guarded

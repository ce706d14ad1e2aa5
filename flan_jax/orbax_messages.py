"""Orbax's and tensorstore's own reports of a checkpoint read or write that failed, cut
down: whoever called them reports the failure itself, in one line.

- Orbax's writer threads (and their asyncio tasks) each log a failed write with its
  traceback: their records keep only their first line.
- When one write of a save fails (a full disk), orbax's event loop closes with the
  other writes still in flight. As each finishes, tensorstore hands its result to the
  closed loop, and Python prints a "RuntimeError: Event loop is closed" traceback
  through `sys.unraisablehook`: dozens per failed save, some after the run's own error
  line. A failed read of a damaged checkpoint leaves the same behind. Those are dropped
  (the first one noted at INFO level).
- The writes of such a save that never started are coroutines never awaited, which
  Python reports with a RuntimeWarning as the interpreter exits. Those of orbax's
  serialization are ignored.

`quiet()` lasts for the life of the process: the writes left pending report as late as
the interpreter's exit, after the checkpointer has closed. A leaf module: the trainer's
checkpointer and `models.convert`'s checkpoint reader both call it.
"""

import logging
import sys
import traceback
import warnings

_NOISY_LOGGERS = ("absl", "asyncio")
# orbax's array writes ("async_serialize_from_host.<locals>.write_fragment").
_UNAWAITED_WRITES = r"coroutine '[^']*serializ[^']*' was never awaited"


class _OneLineOrbaxErrors(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and ("orbax" in record.pathname or
                                            record.name == "asyncio"):
      record.msg, record.args = record.getMessage().splitlines()[0][:300], None
      record.exc_info = record.exc_text = None
    return True


class _CountClosedLoopResults:
  """An unraisable-exception hook that counts the results handed to a closed event loop
  and passes everything else to the hook it replaced."""

  def __init__(self, previous):
    self.previous = previous
    self.count = 0

  def __call__(self, unraisable) -> None:
    if not _handed_to_closed_loop(unraisable):
      self.previous(unraisable)
      return
    self.count += 1
    if self.count == 1:
      logging.info("A checkpoint read or write finished after its event loop closed (the "
                   "operation had failed and is reported on its own); such results are "
                   "dropped without a traceback.")


def _handed_to_closed_loop(unraisable) -> bool:
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return any(frame.name == "call_soon_threadsafe" for frame in frames)


def quiet() -> None:
  """Cuts orbax's and tensorstore's failure reports down, from now to the process's end."""
  for name in _NOISY_LOGGERS:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _OneLineOrbaxErrors) for f in logger.filters):
      logger.addFilter(_OneLineOrbaxErrors())
  warnings.filterwarnings("ignore", message=_UNAWAITED_WRITES, category=RuntimeWarning)
  if not isinstance(sys.unraisablehook, _CountClosedLoopResults):
    sys.unraisablehook = _CountClosedLoopResults(sys.unraisablehook)

"""SIGTERM and SIGINT as a request to stop at the next step boundary, not mid-step.

Schedulers send SIGTERM before preempting a job, and Ctrl-C sends SIGINT. Either sets a
flag; the training loop sees it after the step in flight, saves a checkpoint and stops,
so the rerun resumes there. A second signal of the same kind acts as it would have
without us (Ctrl-C twice still kills at once).

With several processes, a signal may reach only some of them. They agree on stopping
at the same step by combining their flags at `sync` points (the loop's logging steps),
since a process that stopped alone would leave the others waiting in a collective.
"""

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """`with StopSignals() as stop:` ... `if stop.requested(sync=...)`: stop cleanly."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, number, frame) -> None:
    del frame
    self.received = number
    signal.signal(number, self._previous.get(number, signal.SIG_DFL))  # the next one acts

  def __enter__(self) -> "StopSignals":
    try:
      for number in SIGNALS:
        self._previous[number] = signal.signal(number, self._handle)
    except ValueError:  # not the main thread: signals cannot be caught here
      self._previous.clear()
    return self

  def __exit__(self, *exc) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def requested(self, sync: bool) -> bool:
    """Whether to stop now. With several processes, only `sync` points can say yes, and
    then every process says the same."""
    if jax.process_count() == 1:
      return self.received is not None
    if not sync:
      return False
    flags = multihost_utils.process_allgather(
        np.array(self.received or 0, np.int32))
    signalled = [int(f) for f in np.ravel(flags) if f]
    if signalled and self.received is None:
      self.received = signalled[0]
    return bool(signalled)

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else "a signal"

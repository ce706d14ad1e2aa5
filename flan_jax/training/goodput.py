"""Goodput: the share of a run's wall time spent in train steps, and where the rest went.

As MaxText reports it: wall time since the run began (a resumed run starts its clock
afresh), split into productive time
("step": the train steps, the device's work and the host's bookkeeping between them)
and badput, each part its own metric: "setup" (the mesh, initialising or restoring
the state, starting the data stream), "compile" (the first step: tracing, compiling
and running it), "data_wait" (waiting for the next batch), "checkpoint" (judging the
step then saving it) and "eval" (evaluating during training).

The clock is a chess clock: exactly one part runs at any time, so the parts add up
to the wall time (up to float rounding). Steps run asynchronously, so a step's device
time lands where the host next waits for it: in "step" when the host reads its
verdict, or in "checkpoint" when a save waits for the step to finish.
"""

import contextlib
import time
from typing import Iterator

PARTS = ("setup", "compile", "step", "data_wait", "checkpoint", "eval")


class GoodputClock:

  def __init__(self, part: str = "setup"):
    self._began = self._since = time.perf_counter()
    self._part = part
    self._seconds = dict.fromkeys(PARTS, 0.0)

  def switch(self, part: str) -> None:
    """From now on, time counts to `part`."""
    now = time.perf_counter()
    self._seconds[self._part] += now - self._since
    self._part, self._since = part, now

  @contextlib.contextmanager
  def counting(self, part: str) -> Iterator[None]:
    """Time in the block counts to `part`, then to the part that ran before."""
    previous = self._part
    self.switch(part)
    try:
      yield
    finally:
      self.switch(previous)

  def metrics(self) -> dict[str, float]:
    """goodput (step time over wall time), time/wall and time/<part> in seconds, since
    the clock started."""
    self.switch(self._part)
    wall = self._since - self._began
    return {"goodput": self._seconds["step"] / max(wall, 1e-9), "time/wall": wall,
            **{f"time/{part}": seconds for part, seconds in self._seconds.items()}}

"""Training batches made ahead, on a background thread, while the devices compute.

The host renders, tokenizes and packs the next batches and copies them to the devices
while the current step runs, so a step never waits for its batch when the host keeps
up. Each batch carries the stream's position after it: `state()` is the position of
the batch last handed to training (what its checkpoint must save), not of the ones
made ahead, so a resumed run still sees exactly the data of a straight run.
"""

import queue
import threading
from typing import Any, Callable, Iterator

_END = object()


class _Failed:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """Iterates (host batch, placed batch) `depth` batches ahead of its consumer."""

  def __init__(self, stream: Iterator, place: Callable[[Any], Any], depth: int = 2):
    self._stream, self._place = stream, place
    self._has_state = hasattr(stream, "state")
    self._state = stream.state() if self._has_state else None
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._fill, name="batch-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stopped.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self) -> None:
    try:
      for batch in self._stream:
        state = self._stream.state() if self._has_state else None
        if not self._put((batch, self._place(batch), state)):
          return
      self._put(_END)
    except BaseException as e:  # handed to the consumer, raised there
      self._put(_Failed(e))

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self):
    item = self._queue.get()
    if item is _END:
      raise StopIteration
    if isinstance(item, _Failed):
      raise item.error
    batch, placed, self._state = item
    return batch, placed

  def state(self):
    """The stream's position after the last batch handed out (None: it has none)."""
    return self._state

  def close(self) -> None:
    self._stopped.set()
    while True:  # unblock a producer waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)
    _close(self._stream)


class Placed:
  """The synchronous counterpart: (host batch, placed batch) made when asked for."""

  def __init__(self, stream: Iterator, place: Callable[[Any], Any]):
    self._stream, self._place = stream, place

  def __iter__(self) -> "Placed":
    return self

  def __next__(self):
    batch = next(self._stream)
    return batch, self._place(batch)

  def state(self):
    return self._stream.state() if hasattr(self._stream, "state") else None

  def close(self) -> None:
    _close(self._stream)


def _close(stream) -> None:
  """Ends what the stream holds (data worker processes), if it holds anything."""
  if hasattr(stream, "close"):
    stream.close()

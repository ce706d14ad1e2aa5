"""Rendering and tokenizing examples in worker processes, in the order they were drawn.

Template rendering and tokenization are Python and hold the GIL, so threads would not
add cores; forked processes do. The parent keeps every decision that makes the stream
deterministic (which task is drawn next, which of its records): it draws a chunk of
(task, record) pairs, a worker renders and tokenizes them, and the parent hands the
examples on in draw order, with the state the stream had after each. So the examples,
and the state a checkpoint saves, are the same for any number of workers (0 included),
and a run saved with workers resumes without them, or the other way round.

Tasks seqio reads through tf.data (TFDS, files with their own preprocessors) are read
in the parent, in order, when their turn comes. Workers are forked (they inherit the
registered tasks and open vocabularies without pickling them) and ignore SIGINT and
SIGTERM: a stop signal is the trainer's to handle, which finishes its step (its batch
may still need workers) and saves. They are stopped by message, at exit or `close()`.
"""

import collections
from concurrent import futures
import ctypes
import multiprocessing
import os
import signal
import warnings
import weakref
from typing import Any

from flan_jax.data import task_reader
from flan_jax.errors import UserError

_CHUNK = 32  # draws sent to a worker at once: enough to amortise the round trip

_worker_stream: task_reader.MixtureStream | None = None  # each worker's forked copy


def _start_worker(stream: task_reader.MixtureStream, parent: int) -> None:
  global _worker_stream
  _worker_stream = stream
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  # A parent killed outright (SIGKILL, out of memory) sends no stop message, and the
  # workers hold their queue's write end, so they would wait forever holding the data.
  # Linux kills them with their parent when asked (prctl PR_SET_PDEATHSIG = 1).
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: workers end when their parent exits
    pass
  if os.getppid() != parent:  # the parent died before the request took effect
    os._exit(1)


def _render(draws: list[tuple[int, int] | None]) -> list[task_reader.Example | None]:
  return [None if draw is None else _worker_stream.read(*draw) for draw in draws]


class ParallelExamples:
  """A `MixtureStream`'s examples, rendered by `workers` processes; same `state()`."""

  def __init__(self, stream: task_reader.MixtureStream, workers: int):
    self._stream = stream
    self._state = stream.state()
    # Forking a process that runs JAX makes JAX warn that the child may deadlock in
    # JAX; the workers never call JAX (rendering and tokenizing only). The executor forks
    # all its workers at the first submission: here, under this warning filter.
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=r".*os\.fork\(\)")
      self._pool = futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
          initargs=(stream, os.getpid()))
      self._pool.submit(int).result()
    weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
    self._ahead = 2 * workers  # chunks in flight: every worker busy, one chunk queued each
    self._in_flight: collections.deque = collections.deque()
    self._ready: collections.deque = collections.deque()

  def _send_chunk(self) -> None:
    draws, states = [], []
    for _ in range(_CHUNK):
      draws.append(self._stream.draw())
      states.append(self._stream.state())
    to_render = [draw if draw[1] is not None else None for draw in draws]
    self._in_flight.append((draws, states, self._pool.submit(_render, to_render)))

  def __iter__(self) -> "ParallelExamples":
    return self

  def __next__(self) -> task_reader.Example:
    try:
      while len(self._in_flight) < self._ahead:
        self._send_chunk()
      if not self._ready:
        draws, states, result = self._in_flight.popleft()
        self._ready.extend(zip(draws, result.result(), states))
    except futures.process.BrokenProcessPool:
      raise UserError(
          "A data worker process died (killed? out of memory?). Rerun with fewer data "
          "workers (train.data_workers) or none (0); the run resumes from its last "
          "checkpoint.") from None
    (choice, index), example, state = self._ready.popleft()
    if index is None:  # a task seqio reads: read here, in draw order
      example = self._stream.read(choice, index)
    self._state = state
    return example

  def state(self) -> dict[str, Any]:
    return self._state

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)

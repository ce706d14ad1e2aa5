"""Orbax's and tensorstore's reports of a failed checkpoint write are cut down to nothing
the run does not report itself."""

import asyncio
import gc
import sys

import tensorstore as ts

from flan_jax import orbax_messages


def _hand_a_result_to_a_closed_loop():
  """What tensorstore does with each write still pending when a failed save's event
  loop has closed: it calls the loop back from its own thread, and Python reports the
  loop's "Event loop is closed" through sys.unraisablehook."""
  promise, write = ts.Promise.new()
  loop = asyncio.new_event_loop()

  async def wait():
    return await write

  task = loop.create_task(wait())
  loop.run_until_complete(asyncio.sleep(0))  # the task now waits on the write
  loop.close()
  promise.set_result(None)
  del task


class _RaisesWhenCollected:

  def __del__(self):
    raise ValueError("not ours to drop")


def test_results_handed_to_a_closed_loop_are_dropped_and_other_unraisables_pass(monkeypatch):
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  orbax_messages.quiet()
  _hand_a_result_to_a_closed_loop()
  assert reported == []
  _RaisesWhenCollected()
  gc.collect()
  assert [type(u.exc_value) for u in reported] == [ValueError]


def test_orbax_writes_that_never_started_are_not_reported_as_unawaited_coroutines():
  import gc
  import warnings

  async def async_serialize_from_host():  # the name of orbax's array writes
    pass

  async def some_other_coroutine():
    pass

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    orbax_messages.quiet()
    async_serialize_from_host()  # created, never awaited: a failed save's pending write
    some_other_coroutine()
    gc.collect()
  reported = [str(w.message) for w in caught if "never awaited" in str(w.message)]
  assert len(reported) == 1 and "some_other_coroutine" in reported[0], reported

"""Batches made ahead on a thread: the same batches in the same order, the position of
the last one handed out, and the stream's errors raised in the training thread."""

import pytest

from flan_jax.errors import UserError
from flan_jax.training.prefetch import Placed, Prefetcher


class Counting:
  """A stream of numbered batches with a position, failing at `fail_at` if given."""

  def __init__(self, fail_at=None):
    self.made, self.fail_at = 0, fail_at

  def __iter__(self):
    return self

  def __next__(self):
    if self.made == self.fail_at:
      raise UserError(f"bad record in batch {self.made}")
    self.made += 1
    return {"batch": self.made}

  def state(self):
    return {"made": self.made}


def test_prefetched_batches_come_in_order_with_the_position_after_each():
  stream = Counting()
  ahead = Prefetcher(stream, place=lambda b: ("placed", b["batch"]), depth=3)
  assert ahead.state() == {"made": 0}
  for expected in range(1, 6):
    batch, placed = next(ahead)
    assert batch == {"batch": expected} and placed == ("placed", expected)
    # The thread has made more, but the position is that of the batch handed out.
    assert ahead.state() == {"made": expected}
  assert stream.made > 5
  ahead.close()


def test_the_streams_error_is_raised_where_training_asks_for_the_batch():
  ahead = Prefetcher(Counting(fail_at=2), place=lambda b: b, depth=2)
  assert [next(ahead)[0]["batch"] for _ in range(2)] == [1, 2]
  with pytest.raises(UserError, match="bad record in batch 2"):
    next(ahead)
  ahead.close()


def test_without_prefetching_the_position_is_the_streams():
  stream = Counting()
  placed = Placed(stream, place=lambda b: b)
  next(placed), next(placed)
  assert placed.state() == {"made": 2} == stream.state()

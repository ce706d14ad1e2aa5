"""One mask rule: same segment, and causal unless both tokens are in the prefix."""

import numpy as np

from flan_jax.models.attention_mask import make_attention_mask


def _mask(segments, positions, prefix):
  arrays = [np.array([x]) for x in (segments, positions, prefix)]
  return np.asarray(make_attention_mask(*arrays, *arrays))[0, 0]


def test_causal():
  mask = _mask([1, 1, 1], [0, 1, 2], [0, 0, 0])
  np.testing.assert_array_equal(mask, np.tril(np.ones((3, 3), bool)))


def test_prefix_is_bidirectional_and_the_rest_causal():
  mask = _mask([1, 1, 1, 1], [0, 1, 2, 3], [1, 1, 0, 0])
  expected = np.array([[1, 1, 0, 0],
                       [1, 1, 0, 0],
                       [1, 1, 1, 0],
                       [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(mask, expected)


def test_packed_examples_never_see_each_other_and_padding_sees_only_padding():
  mask = _mask([1, 1, 2, 2, 0], [0, 1, 0, 1, 0], [1, 0, 1, 0, 0])
  expected = np.array([[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(mask, expected)
  assert mask.any(axis=1).all()  # no fully masked row, so softmax never divides by zero


def test_cached_keys_by_position_not_slot():
  """A decode query sees every written slot with a smaller position, none unwritten."""
  q = [np.array([[1]]), np.array([[3]]), np.array([[0]])]
  kv = [np.array([[0, 1, 1, 1, 0]]), np.array([[0, 0, 1, 2, 0]]), np.array([[0, 1, 1, 0, 0]])]
  mask = np.asarray(make_attention_mask(*q, *kv))[0, 0, 0]
  np.testing.assert_array_equal(mask, [False, True, True, True, False])


def test_without_prefix_flags_causal_and_without_positions_the_whole_segment():
  """T5's masks: its decoder is causal with no prefix; its encoder and cross-attention
  see every key of the query's segment."""
  segments, positions = np.array([[1, 1, 2, 2, 0]]), np.array([[0, 1, 0, 1, 0]])
  same_segment = segments[0][:, None] == segments[0][None, :]
  causal = make_attention_mask(segments, positions, None, segments, positions, None)[0, 0]
  key_not_after_query = positions[0][None, :] <= positions[0][:, None]
  np.testing.assert_array_equal(causal, same_segment & key_not_after_query)
  np.testing.assert_array_equal(
      causal, _mask([1, 1, 2, 2, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]))
  queries = np.array([[1, 2]])
  cross = make_attention_mask(queries, None, None, segments, None, None)[0, 0]
  np.testing.assert_array_equal(cross, [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]])


def test_the_attention_implementation_is_checked_in_both_model_configs():
  import dataclasses

  import pytest

  from flan_jax.models.t5 import T5Config
  from tiny import TINY_DECODER

  for config in (TINY_DECODER, T5Config()):
    assert dataclasses.replace(config, attention_implementation="cudnn")  # accepted
    with pytest.raises(ValueError, match=r"'xla', 'cudnn'"):
      dataclasses.replace(config, attention_implementation="flash")

"""Shared tiny configurations for tests."""

import numpy as np

from flan_jax.models.decoder import DecoderConfig

# Grouped-query attention (4 heads, 2 KV heads) so GQA is exercised everywhere.
TINY_DECODER = DecoderConfig(vocab_size=259, num_layers=2, embed_dim=32, num_heads=4,
                             num_kv_heads=2, head_dim=8, mlp_dim=64)


def dummy_inputs(length: int):
  """(tokens, positions, segment_ids, prefix) of zeros: enough for `Decoder.init`."""
  zeros = np.zeros((1, length), np.int32)
  return zeros, zeros, zeros, zeros

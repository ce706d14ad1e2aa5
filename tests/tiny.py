"""Shared tiny configurations for tests."""

import os

import numpy as np

from flan_jax.models.decoder import DecoderConfig

# Grouped-query attention (4 heads, 2 KV heads) so GQA is exercised everywhere.
TINY_DECODER = DecoderConfig(vocab_size=259, num_layers=2, embed_dim=32, num_heads=4,
                             num_kv_heads=2, head_dim=8, mlp_dim=64)


def dummy_inputs(length: int):
  """(tokens, positions, segment_ids, prefix) of zeros: enough for `Decoder.init`."""
  zeros = np.zeros((1, length), np.int32)
  return zeros, zeros, zeros, zeros


def simulated_devices_env(count: int = 4) -> dict[str, str]:
  """The environment for a subprocess on `count` simulated CPU devices.

  Without the persistent compilation cache: jaxlib 0.10's CPU executables loaded from
  it can deadlock in their collectives (devices wait on different all-reduces; seen
  on CI and reproduced by rerunning test_mesh's script against a warm cache), while
  freshly compiled ones do not.
  """
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
              JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_ENABLE_COMPILATION_CACHE="false")

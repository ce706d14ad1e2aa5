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


def packed_ids(rows, length, rng):
  """Segment ids, positions restarting per segment, prefix flags; padding at the end."""
  segments, positions, prefix = (np.zeros((rows, length), np.int32) for _ in range(3))
  for row in range(rows):
    start, segment = 0, 1
    while start < length - 8:
      size = int(rng.integers(8, length // 2))
      end = min(start + size, length - 4)
      segments[row, start:end] = segment
      positions[row, start:end] = np.arange(end - start)
      prefix[row, start:start + (end - start) // 2] = 1
      start, segment = end, segment + 1
  return segments, positions, prefix


def attention_decoder(implementation, **overrides):
  """A small decoder config (GQA) with the given attention_implementation."""
  settings = dict(vocab_size=300, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)
  return DecoderConfig(**{**settings, **overrides}, attention_implementation=implementation)


def damage_checkpoint(step_dir):
  """Truncates every array data file of a saved step (a `pathlib.Path`), as a disk fault
  would."""
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:7])

"""One attention mask for causal, prefix-LM, packed and cached attention.

Every token carries three things: a segment id (which packed example it belongs to;
0 for padding), a position inside its example, and a prefix flag (1 for the
prompt, which a prefix-LM reads bidirectionally). A query may see a key when

    same segment  and  (key position <= query position  or  both are in the prefix)

Causality is judged by positions rather than buffer indices, so the same rule
serves packed rows (positions restart per example), left-padded prompts during
decoding, and a KV cache whose unwritten slots have segment 0. Padding tokens share
segment 0 and so see each other: no row is ever fully masked, which keeps softmax
free of NaNs without a special case. The loss mask is a separate thing and lives
with the loss.

A model config's `attention_implementation` says how attention runs:
- "xla": `jax.nn.dot_product_attention`'s XLA path, which holds every float32 score;
- "cudnn": its fused flash-attention kernel (NVIDIA GPUs, 16-bit compute);
- "blocked": `blocked_attention`, a block of keys at a time, masks built per block;
- "auto" (the default): cuDNN on NVIDIA GPUs computing in 16 bits, else "blocked"
  from BLOCKED_FROM_KEYS keys on (where the scores would be large), else "xla".
"""

import jax
import jax.numpy as jnp

from flan_jax.models.blocked_attention import block_size_for


def make_attention_mask(
    q_segment_ids_BxQ: jnp.ndarray,
    q_positions_BxQ: jnp.ndarray,
    q_prefix_BxQ: jnp.ndarray,
    kv_segment_ids_BxK: jnp.ndarray,
    kv_positions_BxK: jnp.ndarray,
    kv_prefix_BxK: jnp.ndarray,
) -> jnp.ndarray:
  """Boolean mask of shape [batch, 1, queries, keys] (broadcast over heads)."""
  same_segment = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
  causal = kv_positions_BxK[:, None, :] <= q_positions_BxQ[:, :, None]
  both_prefix = q_prefix_BxQ.astype(bool)[:, :, None] & kv_prefix_BxK.astype(bool)[:, None, :]
  return (same_segment & (causal | both_prefix))[:, None, :, :]


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "blocked")
# From this many keys on, "auto" takes the blocked path off cuDNN: below it the scores
# are small and the XLA path is faster.
BLOCKED_FROM_KEYS = 1024


def check_attention_implementation(name: str) -> None:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention_implementation={name!r} is not one of "
                     f"{ATTENTION_IMPLEMENTATIONS}.")


def attention_implementation(config, num_keys: int) -> str:
  """"xla", "cudnn" or "blocked": how a config attends over `num_keys` keys."""
  choice = config.attention_implementation
  if choice == "auto":
    sixteen_bit = jnp.dtype(config.dtype).itemsize == 2
    if jax.default_backend() == "gpu" and sixteen_bit:
      choice = "cudnn"
    else:
      choice = "blocked" if num_keys >= BLOCKED_FROM_KEYS else "xla"
  if choice == "blocked" and block_size_for(num_keys) is None:
    return "xla"  # no block of 64+ keys divides them: small or odd lengths
  return choice


def xla_or_cudnn(implementation: str) -> str | None:
  """jax.nn.dot_product_attention's `implementation` argument."""
  return "cudnn" if implementation == "cudnn" else None

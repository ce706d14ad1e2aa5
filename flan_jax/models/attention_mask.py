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

The mask goes to `jax.nn.dot_product_attention`, whose "cudnn" implementation is
the fused flash-attention kernel on NVIDIA GPUs; a model config's
`attention_implementation` chooses it.
"""

import jax.numpy as jnp


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


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def check_attention_implementation(name: str) -> None:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention_implementation={name!r} is not one of "
                     f"{ATTENTION_IMPLEMENTATIONS}.")


def attention_implementation(config) -> str | None:
  """The `implementation` argument of jax.nn.dot_product_attention for a model config."""
  return None if config.attention_implementation == "xla" else config.attention_implementation

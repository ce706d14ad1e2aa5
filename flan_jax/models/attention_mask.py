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
- "causal_blocks": `causal_block_attention`, a block of queries at a time over the keys
  up to its end, skipping the scores causality masks anyway. Only for causal rows
  without a cache (training, scoring, a prompt's prefill is cached); elsewhere "xla";
- "splash": Pallas's splash-attention kernel (`pallas_attention`), compiled for TPUs,
  interpreted elsewhere (slowly: for tests). Only for a row's self-attention without
  a cache, on one device or under `training.mesh.on_mesh`; elsewhere "xla";
- "auto" (the default): cuDNN on NVIDIA GPUs computing in 16 bits; splash on TPUs
  for self-attention without a cache; else "blocked" from BLOCKED_FROM_KEYS keys on
  (where the scores would be large); else on a CPU "causal_blocks" for causal rows
  from CAUSAL_BLOCKS_FROM_KEYS keys on; else "xla".

"causal_blocks" and "splash" judge causality by buffer order instead of positions.
The two agree on rows where, within each example, positions rise by one per token and
the prompt comes before the answer, as every row `data.packing` builds (and the
tests compare them there). Rows built any other way should name "xla" or "blocked".
The splash path is also for decoder-only models: T5's attention takes a bias, so on
TPUs it runs blocked from BLOCKED_FROM_KEYS keys on (fitting in memory before speed).
"""

import jax
import jax.numpy as jnp

from flan_jax.models.blocked_attention import block_size_for, causal_block_size_for
from flan_jax.models.pallas_attention import splash_block_size_for, splash_placeable


def make_attention_mask(
    q_segment_ids_BxQ: jnp.ndarray,
    q_positions_BxQ: jnp.ndarray | None,
    q_prefix_BxQ: jnp.ndarray | None,
    kv_segment_ids_BxK: jnp.ndarray,
    kv_positions_BxK: jnp.ndarray | None,
    kv_prefix_BxK: jnp.ndarray | None,
) -> jnp.ndarray:
  """Boolean mask of shape [batch, 1, queries, keys] (broadcast over heads).

  Without positions every key of the query's segment is visible (an encoder, or
  cross-attention); without prefix flags, none is read bidirectionally (T5's decoder).
  """
  mask = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
  if q_positions_BxQ is not None:
    visible = kv_positions_BxK[:, None, :] <= q_positions_BxQ[:, :, None]
    if q_prefix_BxQ is not None:
      visible = visible | (q_prefix_BxQ.astype(bool)[:, :, None]
                           & kv_prefix_BxK.astype(bool)[:, None, :])
    mask = mask & visible
  return mask[:, None, :, :]


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "blocked", "causal_blocks", "splash")
# From this many keys on, "auto" takes the blocked path off cuDNN: below it the scores
# are small and the XLA path is faster.
BLOCKED_FROM_KEYS = 1024
# From this many keys on, "auto" skips causally masked score blocks on a CPU (measured
# 2x faster at 512 keys; at 128 there is little to skip).
CAUSAL_BLOCKS_FROM_KEYS = 256


def check_attention_implementation(name: str) -> None:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention_implementation={name!r} is not one of "
                     f"{ATTENTION_IMPLEMENTATIONS}.")


def attention_implementation(config, num_keys: int, *, self_attention: bool = False,
                             causal: bool = False) -> str:
  """"xla", "cudnn", "blocked", "causal_blocks" or "splash": how a config attends over
  `num_keys` keys. `self_attention`: the queries attend over their own row, with no
  cache (training, scoring); `causal`: those rows are causal (no prefix read
  bidirectionally). A model whose attention takes a bias passes neither (T5)."""
  choice = config.attention_implementation
  causal = causal and self_attention
  if choice == "auto":
    sixteen_bit = jnp.dtype(config.dtype).itemsize == 2
    backend = jax.default_backend()
    if backend == "gpu" and sixteen_bit:
      choice = "cudnn"
    elif (backend == "tpu" and self_attention and splash_block_size_for(num_keys)
          and splash_placeable()):
      choice = "splash"
    elif num_keys >= BLOCKED_FROM_KEYS:
      choice = "blocked"
    elif causal and num_keys >= CAUSAL_BLOCKS_FROM_KEYS and backend == "cpu":
      choice = "causal_blocks"
    else:
      choice = "xla"
  if choice == "blocked" and block_size_for(num_keys) is None:
    return "xla"  # no block of 64+ keys divides them: small or odd lengths
  if choice == "causal_blocks" and not (causal and causal_block_size_for(num_keys)):
    return "xla"  # a prefix-LM, a cache, or no block divides the length: same result
  if choice == "splash" and not (self_attention and splash_block_size_for(num_keys)
                                 and splash_placeable()):
    return "xla"  # a cache, a bias, no block of 128+ divides the length, or no mesh set
  return choice


def xla_or_cudnn(implementation: str) -> str | None:
  """jax.nn.dot_product_attention's `implementation` argument."""
  return "cudnn" if implementation == "cudnn" else None

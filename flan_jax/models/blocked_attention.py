"""Our own attention paths beside jax's `dot_product_attention`: blocked, causal-blocked
and T5's on a CPU.

`blocked_attention`: attention over one block of keys at a time, never holding
[B, H, Q, K] scores.

The XLA path of `jax.nn.dot_product_attention` builds every query-key score in float32
(64 GiB for a 1B model at 8 x 2,048 tokens); the cuDNN kernel does not, but only
runs on NVIDIA GPUs in 16-bit compute. This is the portable memory-efficient path: an
online softmax (as in flash attention) walks the keys a block at a time, keeping per
query a running maximum, normaliser and weighted sum of values. Each block's scores
exist only inside its step, and the backward pass recomputes them (`jax.checkpoint`),
so memory grows with queries x block, not queries x keys.

Masks and biases come per block from callables of (first key, block size), computed
from token ids (segments, positions, prefix flags) and never built whole.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from flan_jax.models.layers import MASKED_SCORE

# (first key of the block, block size) -> bool [B, 1, Q, block] / float32 [B or 1, H, Q, block]
BlockMask = Callable[[jnp.ndarray, int], jnp.ndarray]
BlockBias = Callable[[jnp.ndarray, int], jnp.ndarray]

# Masked keys score MASKED_SCORE: finite, so a block whose keys are all masked for a
# query (exp(MASKED_SCORE - MASKED_SCORE) = 1) is caught by zeroing masked
# probabilities, not by NaNs; where nothing zeroes them (a row with no key at all),
# the keys weigh equally.


def block_size_for(num_keys: int, preferred: int = 256) -> int | None:
  """The largest power-of-two block <= `preferred` that divides `num_keys` (None if
  only tiny blocks do, where the plain path is as good)."""
  size = preferred
  while size >= 64:
    if num_keys % size == 0:
      return size
    size //= 2
  return None


def causal_block_size_for(num_keys: int) -> int | None:
  """Query blocks for `causal_block_attention`: 128 (4 blocks at 512 keys measured best
  on a CPU), or the largest power of two down to 64 dividing the length (None: none)."""
  return block_size_for(num_keys, preferred=128)


def blocked_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, *, mask_fn: BlockMask,
                      bias_fn: BlockBias | None = None, scale: float,
                      block_size: int) -> jnp.ndarray:
  """softmax(q k^T * scale + bias, masked) v, for H query heads over G <= H key heads."""
  B, Q, H, D = q_BxQxHxD.shape
  num_keys, G = k_BxKxGxD.shape[1], k_BxKxGxD.shape[2]
  R = H // G  # query heads per key head (grouped-query attention)
  if num_keys % block_size:
    raise ValueError(f"{num_keys} keys do not split into blocks of {block_size}.")
  q = q_BxQxHxD.reshape(B, Q, G, R, D)

  @jax.checkpoint  # the backward pass recomputes a block's scores instead of keeping them
  def step(carry, index):
    running_max, normaliser, weighted = carry  # [B,G,R,Q], [B,G,R,Q], [B,Q,G,R,D]
    start = index * block_size
    k = jax.lax.dynamic_slice_in_dim(k_BxKxGxD, start, block_size, axis=1)
    v = jax.lax.dynamic_slice_in_dim(v_BxKxGxD, start, block_size, axis=1)
    scores = jnp.einsum("bqgrd,bkgd->bgrqk", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    if bias_fn is not None:
      bias = bias_fn(start, block_size)
      scores = scores + bias.reshape(bias.shape[0], G, R, Q, block_size)
    mask = mask_fn(start, block_size)[:, :, None]  # [B, 1, 1, Q, block]
    scores = jnp.where(mask, scores, MASKED_SCORE)
    new_max = jnp.maximum(running_max, scores.max(axis=-1))
    probabilities = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
    rescale = jnp.exp(running_max - new_max)
    normaliser = normaliser * rescale + probabilities.sum(axis=-1)
    weighted = (weighted * jnp.moveaxis(rescale, -1, 1)[..., None]
                + jnp.einsum("bgrqk,bkgd->bqgrd", probabilities, v.astype(jnp.float32)))
    return (new_max, normaliser, weighted), None

  init = (jnp.full((B, G, R, Q), MASKED_SCORE, jnp.float32), jnp.zeros((B, G, R, Q), jnp.float32),
          jnp.zeros((B, Q, G, R, D), jnp.float32))
  (_, normaliser, weighted), _ = jax.lax.scan(step, init, jnp.arange(num_keys // block_size))
  out = weighted / jnp.moveaxis(normaliser, -1, 1)[..., None]
  return out.reshape(B, Q, H, D).astype(q_BxQxHxD.dtype)


def causal_block_attention(q_BxLxHxD, k_BxLxGxD, v_BxLxGxD, mask_Bx1xLxL, *, scale: float,
                           block_size: int) -> jnp.ndarray:
  """Causal attention a block of queries at a time, each over the keys up to its end.

  Where no key after a query is ever visible (causal rows, packed or not: positions
  rise within each example), the scores above the diagonal's blocks are all masked,
  so they are never computed: with 4 blocks, 6 of 16 score blocks. Heads lead the
  layout (one transpose of the keys and values, not one per block), and each row is
  normalised after the values are summed, dividing [block, head_dim] numbers instead
  of [block, keys]. On a CPU this is 2x faster than the XLA path at 512 tokens
  (`benchmarks/attention_cpu.py`), which computes and softmaxes every score.
  """
  B, L, H, D = q_BxLxHxD.shape
  G = k_BxLxGxD.shape[2]
  R = H // G  # query heads per key head (grouped-query attention)
  if L % block_size or k_BxLxGxD.shape[1] != L:
    raise ValueError(f"{L} queries over {k_BxLxGxD.shape[1]} keys do not split into causal "
                     f"blocks of {block_size}.")
  k_BxGxLxD, v_BxGxLxD = (jnp.swapaxes(x, 1, 2).astype(q_BxLxHxD.dtype)
                          for x in (k_BxLxGxD, v_BxLxGxD))
  outputs = []
  for start in range(0, L, block_size):
    end = start + block_size
    # A group's R query heads as R x block rows against its key head.
    q = q_BxLxHxD[:, start:end].reshape(B, block_size, G, R, D)
    q = q.transpose(0, 2, 3, 1, 4).reshape(B, G, R * block_size, D)
    scores = jnp.einsum("bgqd,bgkd->bgqk", q, k_BxGxLxD[:, :, :end],
                        preferred_element_type=jnp.float32) * scale
    mask = mask_Bx1xLxL[:, :, None, start:end, :end]  # [B, 1, 1, block, end]
    scores = jnp.where(mask, scores.reshape(B, G, R, block_size, end), MASKED_SCORE)
    # Softmax's shift cancels in its gradient; every row sees at least its own key.
    exp = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    summed = jnp.einsum("bgqk,bgkd->bgqd", exp.reshape(B, G, R * block_size, end),
                        v_BxGxLxD[:, :, :end].astype(jnp.float32))
    out = summed / exp.sum(axis=-1).reshape(B, G, R * block_size, 1)
    outputs.append(out.reshape(B, G, R, block_size, D).transpose(0, 3, 1, 2, 4)
                   .reshape(B, block_size, H, D))
  return jnp.concatenate(outputs, axis=1).astype(q_BxLxHxD.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_rows(bias_1xHxQxK: jnp.ndarray, rows: int) -> jnp.ndarray:
  """The one relative position bias as [rows, H, Q, K], for `cpu_attention`. Its
  gradient sums the rows' gradients with a matrix product: XLA:CPU reduces a leading
  axis of this shape 30x slower (74 vs 2 ms for 8 x 6 x 512 x 512), which took an
  eighth of a T5-small train step, every layer's bias gradient being summed over the
  batch."""
  return jnp.broadcast_to(bias_1xHxQxK, (rows,) + bias_1xHxQxK.shape[1:])


def _broadcast_rows_forward(bias_1xHxQxK, rows):
  return broadcast_rows(bias_1xHxQxK, rows), None


def _broadcast_rows_backward(rows, _, g_BxHxQxK):
  ones = jnp.ones((rows,), g_BxHxQxK.dtype)
  # Exact at HIGHEST precision (a sum of products by one); a default-precision float32
  # matmul may round its inputs (bf16 passes on TPUs, TF32 on GPUs).
  return (jnp.einsum("b...,b->...", g_BxHxQxK, ones, precision=jax.lax.Precision.HIGHEST)[None],)


broadcast_rows.defvjp(_broadcast_rows_forward, _broadcast_rows_backward)


def cpu_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_Bx1xQxK, bias_1xHxQxK):
  """softmax(q k^T + bias, masked) v, unscaled as T5 is, every score at once: XLA's path
  on a CPU, where two changes to `jax.nn.dot_product_attention`'s made a T5-small
  encoder layer's forward and backward 14% faster (174 against 203 ms):
  - each row is normalised after the values are summed, dividing [Q, head_dim] numbers
    instead of [Q, K] probabilities;
  - the one bias reaches every row through `broadcast_rows`.
  A row with every key masked averages the values, as jax's path does."""
  B = q_BxQxHxD.shape[0]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxD, k_BxKxHxD.astype(q_BxQxHxD.dtype),
                      preferred_element_type=jnp.float32)
  if bias_1xHxQxK is not None:
    rows = broadcast_rows(bias_1xHxQxK, B) if bias_1xHxQxK.shape[0] == 1 else bias_1xHxQxK
    scores = scores + rows.astype(jnp.float32)
  if mask_Bx1xQxK is not None:
    scores = jnp.where(mask_Bx1xQxK, scores, MASKED_SCORE)
  # Softmax's shift cancels in its gradient.
  exp = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
  summed = jnp.einsum("bhqk,bkhd->bqhd", exp, v_BxKxHxD.astype(jnp.float32))
  normaliser = jnp.swapaxes(exp.sum(axis=-1), 1, 2)[..., None]  # [B, Q, H, 1]
  return (summed / normaliser).astype(q_BxQxHxD.dtype)

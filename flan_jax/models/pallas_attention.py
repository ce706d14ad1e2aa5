"""Attention through Pallas's splash-attention kernel: TPUs' fused path, fed segment ids.

On a TPU, XLA's attention holds every float32 score and our blocked path is a scan
of small matmuls; the splash kernel (jax.experimental.pallas.ops.tpu) runs flash
attention in VMEM and skips the blocks its mask rules out. Its masks are static, one
per head, so what varies per row goes in as segment ids:

- causal rows, packed or not: a causal mask, and the examples' segment ids. Causality
  by buffer index equals causality by position within an example, where positions rise
  by one per token;
- a prefix-LM: the causal call above is right for the answer's queries. The prompt's
  queries see their whole prompt, which a second, unmasked call gives when a prompt's
  tokens and its answer's tokens carry different ids (2 * segment, 2 * segment + 1);
  each query takes the call that is right for it. This relies on each example's
  prompt coming before its answer, as every feature converter here packs them, and
  costs one and a half times a full mask's score blocks (the causal call skips half).

Under a mesh the kernel runs per shard (`jax.shard_map`): a Pallas call has no rule
for XLA to partition it by, so over several devices it needs the mesh and the logical
axis rules set (`training.mesh.on_mesh`). Rows split over the batch axes and heads over
the tensor axis, as those rules place them; a row's length is never split. Off TPUs
the kernel is interpreted, which is slow and meant for tests.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Score blocks (query and key rows) the kernel works in, largest first. TPUs want
# multiples of 128; at 512 a block's scores stay small in VMEM.
SPLASH_BLOCK_SIZES = (512, 256, 128)


def splash_block_size_for(num_keys: int) -> int | None:
  """The largest of SPLASH_BLOCK_SIZES dividing the length (None: none does)."""
  return next((size for size in SPLASH_BLOCK_SIZES if num_keys % size == 0), None)


def splash_placeable() -> bool:
  """Whether the kernel can run here: on the only device, or per shard of the mesh a
  trace runs under with logical axis rules that place its rows (`training.mesh.on_mesh`;
  training and evaluation run in it). Over several devices without them, XLA could not
  split the kernel's work, and every device would compute every row."""
  if jax.device_count() == 1:
    return True
  if jax.sharding.get_abstract_mesh().empty:
    return False
  return any(nn.logical_to_mesh_axes(("batch",)))


@functools.lru_cache(maxsize=None)
def _kernel(length: int, num_heads: int, causal: bool, interpret: bool):
  """One splash kernel per shape and mask: building its mask tables costs host time.
  They are built as concrete arrays even inside a trace, so the cached kernel holds no
  tracer of the trace that first asked for it."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  block = splash_block_size_for(length)
  shape = (length, length)
  mask = splash.MultiHeadMask(
      [splash.CausalMask(shape) if causal else splash.FullMask(shape)] * num_heads)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            use_fused_bwd_kernel=True)
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _attend(q_BxHxLxD, k_BxGxLxD, v_BxGxLxD, segment_ids_BxL, prefix_BxL=None):
  """Splash attention on one shard's rows, heads first; `prefix_BxL` None: causal rows."""
  from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
  _, H, L, _ = q_BxHxLxD.shape
  interpret = jax.default_backend() != "tpu"

  def call(causal, ids_BxL):
    kernel = _kernel(L, H, causal, interpret)
    per_row = lambda q, k, v, ids: kernel(q, k, v, segment_ids=SegmentIds(q=ids, kv=ids))
    return jax.vmap(per_row)(q_BxHxLxD, k_BxGxLxD, v_BxGxLxD, ids_BxL)

  out = call(True, segment_ids_BxL)
  if prefix_BxL is None:
    return out
  prompt_or_answer = 2 * segment_ids_BxL + 1 - (prefix_BxL > 0).astype(segment_ids_BxL.dtype)
  prompts_read_whole = call(False, prompt_or_answer)
  return jnp.where((prefix_BxL > 0)[:, None, :, None], prompts_read_whole, out)


def splash_attention(q_BxLxHxD, k_BxLxGxD, v_BxLxGxD, segment_ids_BxL, prefix_BxL=None, *,
                     scale: float) -> jnp.ndarray:
  """softmax(q k^T * scale) v over a row's own tokens: same segment, causal, and with
  `prefix_BxL` the prompt read bidirectionally. H query heads over G <= H key heads."""
  length = q_BxLxHxD.shape[1]
  if k_BxLxGxD.shape[1] != length or splash_block_size_for(length) is None:
    raise ValueError(f"splash attention needs a row's own {length} keys in blocks of "
                     f"{SPLASH_BLOCK_SIZES[-1]}; got {k_BxLxGxD.shape[1]} keys.")
  heads_first = lambda x: jnp.swapaxes(x, 1, 2).astype(q_BxLxHxD.dtype)
  q, k, v = heads_first(q_BxLxHxD * scale), heads_first(k_BxLxGxD), heads_first(v_BxLxGxD)
  ids = tuple(x.astype(jnp.int32) for x in (segment_ids_BxL, prefix_BxL) if x is not None)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    out = _attend(q, k, v, *ids)
  else:  # per shard: rows over the batch axes, heads over the tensor axis
    to_mesh = lambda *axes: nn.logical_to_mesh_axes(axes)
    heads = to_mesh("batch", "heads", None, None)
    kv_heads = to_mesh("batch", "kv_heads", None, None)
    rows = to_mesh("batch", None)
    in_specs = (heads, kv_heads, kv_heads) + (rows,) * len(ids)
    out = jax.shard_map(_attend, mesh=mesh, in_specs=in_specs, out_specs=heads,
                        check_vma=False)(q, k, v, *ids)
  return jnp.swapaxes(out, 1, 2)

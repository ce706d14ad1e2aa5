"""The T5 v1.1 encoder-decoder (also original T5 and Flan-T5), the Flan papers' main model.

What sets T5 apart from our Llama-style `decoder`, and why it matters here:

- RMSNorm before every sub-layer (no mean subtraction), no biases anywhere.
- No 1/sqrt(head_dim) scaling of the attention logits: T5 folds it into the query
  initialisation instead, so checkpoints only match with `scale=1.0`.
- Positions enter only as a learned relative position bias added to the logits: a
  table [buckets, heads] per stack (bidirectional buckets in the encoder, causal in
  the decoder; cross-attention has none). Hugging Face stores the table in each
  stack's first layer; conceptually every layer shares it, so ours lives at the
  stack level (`encoder/relpos_bias`, `decoder/relpos_bias`).
- Feed-forward: "gated-gelu" (v1.1 / Flan-T5, tanh-approximated GELU), "gated-silu",
  or "relu" (original T5).
- v1.1 has a separate output projection. Original T5 ties it to the embedding and
  scales the decoder output by embed_dim**-0.5 first (`tie_embeddings=True`).

Packed rows (segment ids and segment-local positions from seqio's
EncDecFeatureConverter) keep examples apart in all three attentions: a query sees
a key only in the same segment. Padding has segment 0, so padding tokens see each
other and no softmax row is ever empty.

Decoding uses a functional cache (see `init_cache`) of the decoder self-attention
keys and values. The first cached `decode` call also projects `encoded` into each
layer's cross-attention keys and values and keeps them in the cache ("cross"), so
later steps attend to them without recomputing them from the encoding.

Attention over many keys (from BLOCKED_FROM_KEYS on under "auto", e.g. long inputs)
takes the blocked path outside cached decoding: the stacks pass `BlockedMask` ids and
the bias table instead of a whole mask and bias, and each block of keys gets its mask
and its [1, H, Q, block] bias built from them, so no [B or 1, H, Q, K] array exists.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.models import layer_stack, layers
from flan_jax.models.attention_mask import (attention_implementation, make_attention_mask,
                                            xla_or_cudnn)
from flan_jax.models.blocked_attention import block_size_for, blocked_attention, cpu_attention
from flan_jax.models.config import ModelConfig
from flan_jax.models.layers import RMSNorm, fan_in_init

Cache = dict[str, Any]

# feed_forward -> (activation, gated). HF calls the tanh-approximated GELU "gelu_new".
FEED_FORWARDS = {
    "gated-gelu": (lambda x: jax.nn.gelu(x, approximate=True), True),
    "gated-silu": (jax.nn.silu, True),
    "relu": (jax.nn.relu, False),
}


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
  """`ModelConfig`'s settings, and T5's own.

  `tie_embeddings` True: original T5, the output projection is the embedding (after
  scaling the decoder output by embed_dim**-0.5). False: v1.1 / Flan-T5, a separate
  lm_head. `attention_implementation`: "auto", "xla", "cudnn" or "blocked" (the paths
  that take no bias, "causal_blocks" and "splash", come to "xla" here). Dropout is
  t5x's: on the embeddings, the MLP's hidden units, each sub-layer's output before it
  joins the residual stream, and each stack's output. Attention probabilities are not
  dropped: the fused attention kernels take no dropout.
  """
  mlp_dim: int = 256
  tie_embeddings: bool = False
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward: str = "gated-gelu"

  @property
  def tied_output_scale(self) -> float:
    return self.embed_dim ** -0.5

  def lora_names(self):
    # Hugging Face's names for the feed-forward: wi_0 and wi_1 gated, wi plain; wo.
    gated = FEED_FORWARDS.get(self.feed_forward, (None, True))[1]
    mlp = {"gate": ("wi_0",), "up": ("wi_1",)} if gated else {"up": ("wi",)}
    names = {"query": ("q",), "key": ("k",), "value": ("v",), "out": ("o",), **mlp,
             "down": ("wo",)}
    return names if self.tie_embeddings else {**names, "lm_head": ("lm_head",)}

  def __post_init__(self):
    if self.feed_forward not in FEED_FORWARDS:
      raise ValueError(f"feed_forward={self.feed_forward!r} is not one of {sorted(FEED_FORWARDS)}.")
    super().__post_init__()


def relative_position_buckets(relative_position, bidirectional: bool, num_buckets: int,
                              max_distance: int):
  """T5's bucket of each relative position (key position - query position).

  Half the buckets count exact distances, the other half grow logarithmically up
  to `max_distance`; bidirectional buckets split the table between keys before
  and after the query, causal ones only count keys before it. The float32
  arithmetic follows Hugging Face's, whose truncation decides the exact-boundary
  distances (e.g. 16, 32, 64).
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # max(., 1): log(0) is never used (is_small) but would turn into a garbage integer.
  log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
               / math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


def position_bias(table_NxH, q_positions_BxQ, k_positions_BxK, bidirectional: bool,
                  config: T5Config):
  """The relative position bias [B, H, Q, K] (float32) for the given positions.

  Batch dimensions of 1 broadcast: positions shared by all rows give one bias.
  """
  relative = k_positions_BxK[:, None, :] - q_positions_BxQ[:, :, None]
  buckets = relative_position_buckets(relative, bidirectional,
                                      config.relative_attention_num_buckets,
                                      config.relative_attention_max_distance)
  bias_BxQxKxH = jnp.take(table_NxH.astype(jnp.float32), buckets, axis=0)
  return jnp.transpose(bias_BxQxKxH, (0, 3, 1, 2))


def segment_mask(q_segment_ids_BxQ, k_segment_ids_BxK, q_positions_BxQ=None, k_positions_BxK=None):
  """Boolean [B, 1, Q, K]: same segment and, given positions, key not after query."""
  return make_attention_mask(q_segment_ids_BxQ, q_positions_BxQ, None, k_segment_ids_BxK,
                             k_positions_BxK, None)


class BlockedMask(NamedTuple):
  """What the blocked path masks each block of keys by, in place of a whole mask: the
  queries' and keys' segment ids and, for causal attention, their positions."""
  q_segment_ids: jnp.ndarray
  k_segment_ids: jnp.ndarray
  q_positions: jnp.ndarray | None = None
  k_positions: jnp.ndarray | None = None


def _blocked(cfg: T5Config, num_keys: int) -> bool:
  """Whether attention over `num_keys` keys takes the blocked path (a stack's choice)."""
  return attention_implementation(cfg, num_keys) == "blocked"


class Attention(nn.Module):
  """Multi-head attention of queries from x over keys/values from `source` (x itself or encoded)."""
  config: T5Config
  # The buckets the blocked path computes each block's relative position bias in:
  # bidirectional (the encoder) or causal (the decoder's self-attention).
  bidirectional: bool = True

  @nn.compact
  def __call__(self, x_BxQxE, source_BxKxE, mask, bias, layer_cache=None, cache_index=None,
               memory=None):
    """(output, keys and values): with `layer_cache`, the updated self-attention cache;
    else {"k", "v"} as attended, which `memory` passes back in to skip projecting
    `source` again (cross-attention during decoding)."""
    cfg = self.config
    E, H, D = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    weight = lambda name, init, shape: layers.weight(self, name, shape, init, cfg)
    # The 1/sqrt(head_dim) that other transformers apply to the logits is folded into
    # the query's initial scale: T5 never scales the logits.
    w_q_ExHxD = weight("query", fan_in_init(("embed", "heads", "kv"), scale=1.0 / D), (E, H, D))
    w_k_ExHxD = weight("key", fan_in_init(("embed", "heads", "kv")), (E, H, D))
    w_v_ExHxD = weight("value", fan_in_init(("embed", "heads", "kv")), (E, H, D))
    w_o_HxDxE = weight("out", fan_in_init(("heads", "kv", "embed"), in_axes=(0, 1)), (H, D, E))

    q = layers.linear(x_BxQxE, w_q_ExHxD)
    if memory is None:
      k = layers.linear(source_BxKxE, w_k_ExHxD)
      v = layers.linear(source_BxKxE, w_v_ExHxD)
    else:
      k, v = memory["k"], memory["v"]
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    keys_values = {"k": k, "v": v}
    if layer_cache is not None:
      keys_values = layers.write_kv(layer_cache, k, v, cache_index)
      k, v = keys_values["k"], keys_values["v"]
    if isinstance(mask, BlockedMask):  # `bias` is then the relative position table, or None
      out = self._blocked_attention(q, k, v, mask, bias)
    else:  # a whole mask and bias: cuDNN (NVIDIA GPUs, 16 bits) or XLA
      implementation = attention_implementation(cfg, k.shape[1])
      if implementation == "xla" and jax.default_backend() == "cpu":
        out = cpu_attention(q, k, v, mask, bias)
      else:
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias,
                                           mask=mask, scale=1.0,
                                           implementation=xla_or_cudnn(implementation))
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return layers.linear(out, w_o_HxDxE), keys_values

  def _blocked_attention(self, q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask: BlockedMask, table_NxH):
    """Attention a block of keys at a time: each block's mask from the ids, its bias
    from the table at the rows' indices (as `_row_indices`: one bias for every row)."""
    cfg = self.config
    num_queries = q_BxQxHxD.shape[1]
    keys = lambda ids, start, size: (
        None if ids is None else jax.lax.dynamic_slice_in_dim(ids, start, size, axis=1))
    mask_fn = lambda start, size: segment_mask(
        mask.q_segment_ids, keys(mask.k_segment_ids, start, size), mask.q_positions,
        keys(mask.k_positions, start, size))
    bias_fn = None
    if table_NxH is not None:
      bias_fn = lambda start, size: position_bias(
          table_NxH, jnp.arange(num_queries)[None, :], start + jnp.arange(size)[None, :],
          self.bidirectional, cfg)
    return blocked_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_fn=mask_fn, bias_fn=bias_fn,
                             scale=1.0, block_size=block_size_for(k_BxKxHxD.shape[1]))


class MLP(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x_BxLxE):
    cfg = self.config
    activation, gated = FEED_FORWARDS[cfg.feed_forward]
    dense = lambda features, axes, name: layers.Dense(features, axes, cfg, name=name)
    # Gated: activation(gate) * up (HF wi_0, wi_1); plain: activation(up) (HF wi).
    hidden = activation(dense(cfg.mlp_dim, ("embed", "mlp"), "gate" if gated else "up")(x_BxLxE))
    if gated:
      hidden = hidden * dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x_BxLxE)
    hidden = nn.with_logical_constraint(layer_stack.dropout(self, hidden, cfg.dropout_rate),
                                        ("batch", "length", "mlp"))
    return dense(cfg.embed_dim, ("mlp", "embed"), "down")(hidden)


def _norm(cfg: T5Config, name: str) -> RMSNorm:
  return RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)


def _dropout(module: nn.Module, x):
  return layer_stack.dropout(module, x, module.config.dropout_rate)


class EncoderBlock(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, mask, bias, layer_state):
    cfg = self.config
    normed = _norm(cfg, "attention_norm")(x)
    attended, _ = Attention(cfg, name="attention")(normed, normed, mask, bias)
    x = x + _dropout(self, attended)
    x = x + _dropout(self, MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x)))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), layer_state


class DecoderBlock(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, encoded, self_mask, self_bias, cross_mask, cache_index, layer_cache):
    cfg = self.config
    self_cache = memory = None
    if layer_cache is not None:
      self_cache = {"k": layer_cache["k"], "v": layer_cache["v"]}
      memory = layer_cache.get("cross")  # None on the first cached step: projected below
    normed = _norm(cfg, "self_attention_norm")(x)
    attended, self_cache = Attention(cfg, bidirectional=False, name="self_attention")(
        normed, normed, self_mask, self_bias, self_cache, cache_index)
    x = x + _dropout(self, attended)
    attended, memory = Attention(cfg, name="cross_attention")(
        _norm(cfg, "cross_attention_norm")(x), encoded, cross_mask, None, memory=memory)
    x = x + _dropout(self, attended)
    x = x + _dropout(self, MLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x)))
    if layer_cache is not None:
      layer_cache = {**self_cache, "cross": memory}
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), layer_cache


def _relpos_table(module: nn.Module, cfg: T5Config):
  init = nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("relpos_buckets", "heads"))
  return module.param("relpos_bias", init, (cfg.relative_attention_num_buckets, cfg.num_heads),
                      cfg.param_dtype)


def _row_indices(x_BxLxE):
  """Query and key indices 0..L-1 for all rows: the relative position bias from these is
  one [1, H, L, L] table shared by every row, not one per row. It equals the bias from
  the tokens' own positions wherever attention is allowed: within an example (a packed
  segment, or a left-padded prompt) positions rise by one per index, so key position -
  query position = key index - query index; across examples the mask hides the score."""
  indices = jnp.arange(x_BxLxE.shape[1])[None, :]
  return indices, indices


class EncoderStack(nn.Module):
  """Embedded inputs [B, L, E] -> encoded [B, L, E] (after the final norm)."""
  config: T5Config

  @nn.compact
  def __call__(self, x, segment_ids_BxL, positions_BxL):
    cfg = self.config
    table = _relpos_table(self, cfg)
    if _blocked(cfg, x.shape[1]):
      mask, bias = BlockedMask(segment_ids_BxL, segment_ids_BxL), table
    else:
      bias = position_bias(table, *_row_indices(x), True, cfg)
      mask = segment_mask(segment_ids_BxL, segment_ids_BxL)
    x, _ = layer_stack.apply_layers(
        EncoderBlock, cfg, x, (mask, bias), None, num_layers=cfg.num_encoder_layers,
        scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
    return _dropout(self, _norm(cfg, "final_norm")(x))


class DecoderStack(nn.Module):
  """Embedded targets [B, L, E] + encoded inputs -> hidden states [B, L, E], new cache."""
  config: T5Config

  @nn.compact
  def __call__(self, x, encoded, encoder_segment_ids, segment_ids, positions, cache):
    cfg = self.config
    table = _relpos_table(self, cfg)
    if cache is None:
      per_layer, cache_index = None, None
      if _blocked(cfg, x.shape[1]):
        self_mask, self_bias = BlockedMask(segment_ids, segment_ids, positions, positions), table
      else:
        self_mask = segment_mask(segment_ids, segment_ids, positions, positions)
        self_bias = position_bias(table, *_row_indices(x), False, cfg)
    else:
      # Cache slot j holds the token at position j, so causality over slots also
      # hides the slots not yet written.
      per_layer, cache_index = cache["layers"], cache["index"]
      length = (per_layer if cfg.scan_layers else per_layer[0])["k"].shape[-3]
      slots = jnp.arange(length)[None, :]
      self_mask = (slots[:, None, :] <= positions[:, :, None])[:, None]
      self_bias = position_bias(table, positions, slots, False, cfg)
    # Cached decoding reads one query a step: its scores are small, and a scan over
    # blocks per layer and token would only slow it.
    blocked_cross = cache is None and _blocked(cfg, encoded.shape[1])
    cross_mask = (BlockedMask if blocked_cross else segment_mask)(segment_ids,
                                                                   encoder_segment_ids)
    x, per_layer = layer_stack.apply_layers(
        DecoderBlock, cfg, x, (encoded, self_mask, self_bias, cross_mask, cache_index), per_layer,
        num_layers=cfg.num_decoder_layers, scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
    x = _dropout(self, _norm(cfg, "final_norm")(x))
    if cache is None:
      return x, None
    return x, {"layers": per_layer, "index": cache_index + x.shape[1]}


class T5(nn.Module):
  """Encoder-decoder: `__call__` for training, `encode` then `decode` (with a cache) for inference.

  Token id 0 is padding in the encoder (and the decoder's start token). Segment
  ids default to "one example per row" (encoder: token != 0), positions to 0, 1, ...
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    # T5 does not scale its embedding, so it starts at unit variance.
    self.embedding = layers.embedding_table(self, cfg, stddev=1.0)
    self.encoder = EncoderStack(cfg)
    self.decoder = DecoderStack(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Dense(cfg.padded_vocab_size, ("embed", "vocab"), cfg)

  def _embed(self, tokens_BxL):
    x = jnp.take(self.embedding, tokens_BxL, axis=0).astype(self.config.dtype)
    return nn.with_logical_constraint(_dropout(self, x), ("batch", "length", "embed"))

  def __call__(self, encoder_tokens, decoder_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None,
               return_hidden: bool = False):
    """Teacher-forced logits [B, Ld, vocab_size] (float32); with `return_hidden`, the
    decoder's final hidden states [B, Ld, E] that the logits are projected from
    (`families.EncoderDecoder.project`), for a loss computed a chunk at a time."""
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_tokens != 0).astype(jnp.int32)
    encoded = self.encode(encoder_tokens, encoder_segment_ids, encoder_positions)
    x, _ = self._decode_hidden(encoded, encoder_segment_ids, decoder_tokens,
                               decoder_segment_ids, decoder_positions, None)
    return x if return_hidden else self._logits(x)

  def encode(self, encoder_tokens, encoder_segment_ids=None, encoder_positions=None):
    """Encoded inputs [B, Le, E] in the compute dtype."""
    if encoder_segment_ids is None:
      encoder_segment_ids = (encoder_tokens != 0).astype(jnp.int32)
    if encoder_positions is None:
      encoder_positions = jnp.arange(encoder_tokens.shape[1])[None, :]  # one bias for all rows
    return self.encoder(self._embed(encoder_tokens), encoder_segment_ids, encoder_positions)

  def decode(self, encoded, encoder_segment_ids, decoder_tokens, decoder_segment_ids=None,
             decoder_positions=None, cache: Cache | None = None):
    """(logits [B, Ld, vocab_size] float32, new cache or None).

    `encoder_segment_ids` must be the ones `encode` used (None: no encoder padding).
    With a cache, `decoder_tokens` go into slots index, index + 1, ... and their
    positions default to those slot numbers; self-attention is then causal over
    the written slots (one example per row), while `decoder_segment_ids` still
    select what cross-attention sees.
    """
    x, new_cache = self._decode_hidden(encoded, encoder_segment_ids, decoder_tokens,
                                       decoder_segment_ids, decoder_positions, cache)
    return self._logits(x), new_cache

  def _decode_hidden(self, encoded, encoder_segment_ids, decoder_tokens, decoder_segment_ids,
                     decoder_positions, cache):
    batch, length = decoder_tokens.shape
    if encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones(encoded.shape[:2], jnp.int32)
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones((batch, length), jnp.int32)
    if decoder_positions is None:
      start = 0 if cache is None else cache["index"]
      decoder_positions = jnp.broadcast_to(start + jnp.arange(length)[None, :], (batch, length))
    return self.decoder(self._embed(decoder_tokens), encoded, encoder_segment_ids,
                        decoder_segment_ids, decoder_positions, cache)

  def _logits(self, x_BxLxE):
    lm_head = None if self.config.tie_embeddings else self.lm_head
    return layers.output_logits(self.config, x_BxLxE, self.embedding, lm_head)


def init_cache(config: T5Config, batch_size: int, length: int) -> Cache:
  """An empty decoder self-attention cache for `length` target tokens.

  {"layers": per-layer {"k", "v"} [B, length, H, D] (a tuple of one dict per layer,
  or with `scan_layers` one dict with a leading layer axis), "index": next slot}.
  The first `decode` with it adds each layer's cross-attention {"k", "v"} [B, Le, H, D]
  as "cross".
  """
  return {"layers": layers.init_kv_cache(config.num_decoder_layers, config.scan_layers, batch_size,
                                        length, config.num_heads, config.head_dim, config.dtype),
          "index": jnp.zeros((), jnp.int32)}

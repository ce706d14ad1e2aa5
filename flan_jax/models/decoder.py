"""A Llama-style decoder-only transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Used as a prefix-LM: the prompt is read bidirectionally and the answer causally (see
`attention_mask`). Every parameter carries logical axis names (`vocab`, `embed`,
`heads`, `kv_heads`, `kv`, `mlp`) that `flan_jax.training.mesh` maps onto mesh axes,
so the same module runs data-parallel, FSDP or tensor-parallel without change.

Decoding uses a functional KV cache: a pytree passed in and returned, holding each
layer's keys and values plus every slot's segment id, position and prefix flag, so
the one mask rule covers cached attention too (unwritten slots have segment 0).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models import layers
from flan_jax.models.attention_mask import (attention_implementation, make_attention_mask,
                                            xla_or_cudnn)
from flan_jax.models.blocked_attention import (block_size_for, blocked_attention,
                                              causal_block_attention, causal_block_size_for)
from flan_jax.models.config import ModelConfig
from flan_jax.models.layer_stack import apply_layers, dropout
from flan_jax.models.layers import RMSNorm, fan_in_init
from flan_jax.models.pallas_attention import splash_attention

Cache = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ModelConfig):
  """`ModelConfig`'s settings, and the decoder's own. Its dropout is on the embeddings
  and on each attention and MLP output before it joins the residual stream."""
  num_layers: int = 4
  num_kv_heads: int = 4
  rope_theta: float = 10_000.0
  # RoPE frequency scaling for longer contexts: "none", "linear" (every frequency
  # divided by the factor) or "llama3" (Llama 3.1/3.2: low frequencies divided by the
  # factor, high ones kept, a smooth blend between; see `rope_frequencies`).
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  # True: a prefix-LM, reading the prompt bidirectionally (t5x's decoder-only FLAN
  # setup). False: causal attention everywhere, as the Hugging Face causal LMs it is
  # imported from were pretrained and as transformers runs an export.
  prefix_lm: bool = True
  # Qwen2 adds a bias to the query, key and value projections (not the output one).
  attention_bias: bool = False

  def lora_names(self):
    names = {"query": ("q", "q_proj"), "key": ("k", "k_proj"), "value": ("v", "v_proj"),
             "out": ("o", "o_proj"), "gate": ("gate", "gate_proj"), "up": ("up", "up_proj"),
             "down": ("down", "down_proj")}
    return names if self.tie_embeddings else {**names, "lm_head": ("lm_head",)}

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}.")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"rope_scaling={self.rope_scaling!r} is not one of {ROPE_SCALINGS}.")
    super().__post_init__()


ROPE_SCALINGS = ("none", "linear", "llama3")


def rope_frequencies(config: DecoderConfig) -> np.ndarray:
  """The head_dim/2 rotation frequencies (radians per position), scaled as configured.

  Computed in float64 numpy at trace time: they are constants of the model.
  """
  D = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
  factor = config.rope_scaling_factor
  if config.rope_scaling == "linear":
    inv_freq = inv_freq / factor
  elif config.rope_scaling == "llama3":
    # Wavelengths longer than the original context / low_freq_factor are stretched by
    # the factor, those shorter than context / high_freq_factor kept, and those in
    # between interpolated linearly in (context / wavelength).
    context = config.rope_original_max_position
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelength = 2 * np.pi / inv_freq
    blend = np.clip((context / wavelength - low) / (high - low), 0.0, 1.0)
    inv_freq = (1 - blend) * inv_freq / factor + blend * inv_freq
  return inv_freq.astype(np.float32)


def rope_tables(positions_BxL: jnp.ndarray, inv_freq: np.ndarray, num_positions: int):
  """cos and sin of each position's angles, [B, L, 1, head_dim / 2], looked up in tables
  of positions 0 .. num_positions - 1 built at trace time.

  Why tables: computed from the positions in the graph, XLA fuses the cos and sin into
  every consumer, recomputing them per head, per layer, for q and k, forward and
  backward (130 of a decoder_10m CPU step's 1,900 ms of operations; 45 ms as a
  lookup). The angles are the float32 products as before; their cos and sin are
  rounded from float64. A position outside the tables gives NaN, which poisons its row
  (never a silently wrong angle). The decoder sizes them by its number of keys, which
  bounds every position that packing, scoring and decoding build. The tables are
  constants in the compiled program: 2 x (num_positions + 1) x head_dim / 2 floats.
  """
  angles = (np.arange(num_positions, dtype=np.float32)[:, None] * inv_freq).astype(np.float64)
  out_of_range = (positions_BxL < 0) | (positions_BxL >= num_positions)
  index = jnp.where(out_of_range, num_positions, positions_BxL)  # the tables' last row: NaN
  nan_row = np.full((1, inv_freq.shape[0]), np.nan)

  def lookup(values):  # the index is in bounds by construction: no per-element checks
    table = jnp.asarray(np.concatenate([values, nan_row]).astype(np.float32))
    return table.at[index].get(mode="promise_in_bounds")[:, :, None, :]

  return lookup(np.cos(angles)), lookup(np.sin(angles))


def apply_rope(x_BxLxHxD, cos, sin):
  """Rotates each pair (x[i], x[i + head_dim / 2]) by its angle: Hugging Face's
  rotate-half layout, x * cos + rotate_half(x) * sin, computed on the two halves.
  The same formula as building rotate_half(x) whole (equal up to XLA's rounding), with
  fewer pads and concatenations: a decoder_10m CPU train step ran 7-12% faster."""
  half = x_BxLxHxD.shape[-1] // 2
  first = x_BxLxHxD[..., :half].astype(jnp.float32)
  second = x_BxLxHxD[..., half:].astype(jnp.float32)
  rotated = [first * cos - second * sin, second * cos + first * sin]
  return jnp.concatenate(rotated, axis=-1).astype(x_BxLxHxD.dtype)


class Attention(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxE, mask_ids, cos, sin, layer_cache=None, cache_index=None):
    """`mask_ids`: (the whole mask,), or for the blocked and splash paths the queries'
    then the keys' (segment ids, positions, prefix flags), which they mask by."""
    cfg = self.config
    E, H, K, D = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    weight = lambda name, axes, shape, in_axes=(0,): layers.weight(
        self, name, shape, fan_in_init(axes, in_axes), cfg)
    w_q_ExHxD = weight("query", ("embed", "heads", "kv"), (E, H, D))
    w_k_ExKxD = weight("key", ("embed", "kv_heads", "kv"), (E, K, D))
    w_v_ExKxD = weight("value", ("embed", "kv_heads", "kv"), (E, K, D))
    w_o_HxDxE = weight("out", ("heads", "kv", "embed"), (H, D, E), in_axes=(0, 1))

    q = layers.linear(x_BxLxE, w_q_ExHxD)
    k = layers.linear(x_BxLxE, w_k_ExKxD)
    v = layers.linear(x_BxLxE, w_v_ExKxD)
    if cfg.attention_bias:
      bias = lambda name, axes, shape: layers.weight(
          self, name, shape, nn.with_logical_partitioning(nn.initializers.zeros, axes), cfg)
      q = q + bias("query_bias", ("heads", "kv"), (H, D))
      k = k + bias("key_bias", ("kv_heads", "kv"), (K, D))
      v = v + bias("value_bias", ("kv_heads", "kv"), (K, D))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    if layer_cache is not None:
      layer_cache = layers.write_kv(layer_cache, k, v, cache_index)
      k, v = layer_cache["k"], layer_cache["v"]
    implementation = _implementation(cfg, k.shape[1], cached=layer_cache is not None)
    if implementation == "splash":
      segment_ids, _, prefix = mask_ids[:3]
      out = splash_attention(q, k, v, segment_ids, prefix if cfg.prefix_lm else None,
                             scale=D ** -0.5)
    elif implementation == "causal_blocks":
      out = causal_block_attention(q, k, v, mask_ids[0], scale=D ** -0.5,
                                   block_size=causal_block_size_for(k.shape[1]))
    elif implementation == "blocked":
      query_ids, key_ids = mask_ids[:3], mask_ids[3:]
      block = lambda ids, start, size: tuple(
          jax.lax.dynamic_slice_in_dim(x, start, size, axis=1) for x in ids)
      out = blocked_attention(
          q, k, v, mask_fn=lambda start, size: make_attention_mask(
              *query_ids, *block(key_ids, start, size)),
          scale=D ** -0.5, block_size=block_size_for(k.shape[1]))
    else:
      out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                         mask=mask_ids[0],
                                         implementation=xla_or_cudnn(implementation))
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return layers.linear(out, w_o_HxDxE), layer_cache


def _implementation(cfg: DecoderConfig, num_keys: int, cached: bool) -> str:
  return attention_implementation(cfg, num_keys, self_attention=not cached,
                                  causal=not cfg.prefix_lm)


class MLP(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxE):
    cfg = self.config
    dense = lambda features, axes, name: layers.Dense(features, axes, cfg, name=name)
    gate = dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x_BxLxE)
    up = dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x_BxLxE)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(cfg.embed_dim, ("mlp", "embed"), "down")(hidden)


class Block(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, mask_ids, cos, sin, cache_index, layer_cache):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)
    attended, layer_cache = Attention(cfg, name="attention")(
        norm("attention_norm")(x), mask_ids, cos, sin, layer_cache, cache_index)
    x = x + dropout(self, attended, cfg.dropout_rate)
    x = x + dropout(self, MLP(cfg, name="mlp")(norm("mlp_norm")(x)), cfg.dropout_rate)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), layer_cache


class Decoder(nn.Module):
  """tokens, positions, segment ids, prefix flags [B, L] -> logits [B, L, V] (float32).

  Positions lie in [0, number of keys): the row length, or the cache length when
  decoding (RoPE's tables stop there; a position beyond gives NaN logits).
  """
  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens_BxL, positions_BxL, segment_ids_BxL, prefix_BxL,
               cache: Cache | None = None, return_hidden: bool = False):
    """(logits, new cache or None); with `return_hidden`, (final hidden states [B, L, E]
    that the logits are projected from (`families.DecoderOnly.project`), None)."""
    cfg = self.config
    if not cfg.prefix_lm:
      prefix_BxL = jnp.zeros_like(prefix_BxL)
    embedding = layers.embedding_table(self, cfg, stddev=0.02)
    x = dropout(self, jnp.take(embedding, tokens_BxL, axis=0).astype(cfg.dtype), cfg.dropout_rate)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    if cache is None:
      kv_segment_ids, kv_positions, kv_prefix = segment_ids_BxL, positions_BxL, prefix_BxL
      cache_index = None
    else:
      cache_index = cache["index"]
      write = lambda buffer, new: jax.lax.dynamic_update_slice(
          buffer, new.astype(buffer.dtype), (0, cache_index))
      kv_segment_ids = write(cache["segment_ids"], segment_ids_BxL)
      kv_positions = write(cache["positions"], positions_BxL)
      kv_prefix = write(cache["prefix"], prefix_BxL)
    mask_ids = (segment_ids_BxL, positions_BxL, prefix_BxL, kv_segment_ids, kv_positions,
                kv_prefix)
    if _implementation(cfg, kv_segment_ids.shape[1], cached=cache is not None) not in (
        "blocked", "splash"):
      mask_ids = (make_attention_mask(*mask_ids),)  # built once, shared by every layer
    cos, sin = rope_tables(positions_BxL, rope_frequencies(cfg), kv_positions.shape[1])

    x, new_layers = apply_layers(
        Block, cfg, x, (mask_ids, cos, sin, cache_index), None if cache is None else cache["layers"],
        num_layers=cfg.num_layers, scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
    x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    if return_hidden:
      return x, None

    lm_head = None if cfg.tie_embeddings else layers.Dense(
        cfg.padded_vocab_size, ("embed", "vocab"), cfg, name="lm_head")
    logits = layers.output_logits(cfg, x, embedding, lm_head)

    if cache is None:
      return logits, None
    new_cache = {
        "layers": new_layers, "segment_ids": kv_segment_ids, "positions": kv_positions,
        "prefix": kv_prefix, "index": cache_index + tokens_BxL.shape[1],
    }
    return logits, new_cache


def init_cache(config: DecoderConfig, batch_size: int, length: int) -> Cache:
  """An empty KV cache for `length` tokens; its slots have segment 0 until written."""
  ids = lambda: jnp.zeros((batch_size, length), jnp.int32)
  return {
      "layers": layers.init_kv_cache(config.num_layers, config.scan_layers, batch_size, length,
                                     config.num_kv_heads, config.head_dim, config.dtype),
      "segment_ids": ids(), "positions": ids(), "prefix": ids(),
      "index": jnp.zeros((), jnp.int32),
  }

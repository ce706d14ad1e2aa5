"""The pieces both model families are built from, written once.

- `weight` and `linear`: every linear map (attention's query, key, value and output,
  the MLPs, the output layer) makes its weight with `weight` and applies it with
  `linear`, so a change to how weights are held or applied (LoRA adapters, a
  quantized frozen base) is made here, in one place. `Dense` is the two together as a
  submodule holding {"kernel"}, the layout `flax.linen.Dense` had. A weight that the
  config's `lora` targets comes with its adapter (`lora`), created here beside it.
- `RMSNorm` and `embedding_table`.
- The decoding cache of keys and values: `init_kv_cache` and `write_kv`.
- `output_logits`: hidden states -> logits through the tied embedding or lm_head, for
  the models' own output and for losses that project a chunk at a time
  (`families.*.project`), so the two cannot drift apart.
- `MASKED_SCORE`: the score, logit or beam score that stands for "never".
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.models import int8_base, lora
from flan_jax.models.layer_stack import dropout
from flan_jax.models.projection import project

# Far below any real score, yet finite: a softmax over a row of them stays free of
# inf - inf (its keys weigh equally), and sums of a few stay comparable (beam search).
# Attention adds it to float32 scores only; float16 logits need `mask_unused_ids`'s care.
MASKED_SCORE = -1e9


def fan_in_init(axes: tuple[str, ...], in_axes: tuple[int, ...] = (0,), scale: float = 1.0):
  """Truncated normal of variance `scale` / fan-in over `in_axes` (`scale=1`: lecun_normal),
  with logical axis names attached for the mesh."""
  out_axes = tuple(i for i in range(len(axes)) if i not in in_axes)
  init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                          in_axis=in_axes, out_axis=out_axes)
  partitioned = nn.with_logical_partitioning(init, axes)
  # What a LoRA adapter of this weight needs to know: its axes' names and which are input.
  partitioned.logical_axes, partitioned.in_axes = tuple(axes), tuple(in_axes)
  return partitioned


def weight(module: nn.Module, name: str, shape: tuple[int, ...], init: Callable,
           config: Any) -> "jnp.ndarray | int8_base.QuantizedWeight | lora.AdaptedWeight":
  """The parameter `name` of `module` (stored in config.param_dtype), in the compute dtype;
  with its LoRA adapter when `config.lora` targets its layer (`ModelConfig.lora_layers`).
  A linear map's weight (made with `fan_in_init`) of an int8 base is its int8 values and
  scales (`int8_base`)."""
  in_axes = getattr(init, "in_axes", None)
  if in_axes is not None and int8_base.enabled(config):  # a linear map of an int8 base
    w = _int8_weight(module, name, shape, init, in_axes, config)
  else:
    w = module.param(name, init, shape, config.param_dtype).astype(config.dtype)
  layer = module.name if name == "kernel" else name  # a Dense is named for its layer
  if config.lora is None or layer not in config.lora_layers():
    return w
  if in_axes is None:
    raise ValueError(f"LoRA on {name!r} needs its weight made with `fan_in_init`")
  in_shape, out_shape = lora.adapter_shapes(tuple(shape), in_axes)
  axes = init.logical_axes
  # A submodule of its own: its parameters draw their initial values from its own
  # rng stream, so the base weights initialise as they would without adapters.
  adapter = LoraAdapter(in_shape, out_shape, axes[:len(in_shape)], axes[len(in_shape):], config,
                        dropout=layer != lora.OUTPUT_LAYER, name=f"{name}{lora.ADAPTER_SUFFIX}")
  return lora.AdaptedWeight(w, adapter)


def _int8_weight(module: nn.Module, name: str, shape: tuple[int, ...], init: Callable,
                 in_axes: tuple[int, ...], config: Any) -> int8_base.QuantizedWeight:
  """The int8 values and per-output-channel scales of a frozen base's linear map
  (`int8_base`): blank at initialisation, their values come from `int8_base.quantize`."""
  axes = init.logical_axes
  values = module.param(name, nn.with_logical_partitioning(_int8_zeros, axes), shape, jnp.int8)
  # The scales' input axes have size 1: never sharded.
  scale_axes = tuple(None if i in in_axes else axis for i, axis in enumerate(axes))
  scale = module.param(name + int8_base.SCALE_SUFFIX,
                       nn.with_logical_partitioning(nn.initializers.ones, scale_axes),
                       int8_base.scale_shape(tuple(shape), in_axes), jnp.float32)
  return int8_base.QuantizedWeight(values, scale.astype(config.dtype))


def _int8_zeros(rng, shape, dtype=jnp.int8):
  del rng
  return jnp.zeros(shape, dtype)


class LoraAdapter(nn.Module):
  """x [..., *in] -> scaling * (dropout(x) @ a) @ b [..., *out]: {"a": [*in, rank], "b":
  [rank, *out]}, float32 whatever the base's dtype, with the base weight's logical axis
  names and the unsharded rank axis; PEFT's initialisation (`lora`).

  The output layer's adapter takes no dropout: the chunked loss projects through it
  outside the model (`families.project`), where no dropout rng is at hand.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  config: Any
  dropout: bool = True

  @nn.compact
  def __call__(self, x):
    cfg, settings = self.config, self.config.lora
    a_init = nn.with_logical_partitioning(lora.a_initializer(tuple(range(len(self.in_shape)))),
                                          (*self.in_names, lora.RANK_AXIS))
    b_init = nn.with_logical_partitioning(nn.initializers.zeros, (lora.RANK_AXIS, *self.out_names))
    a = self.param("a", a_init, (*self.in_shape, settings.rank), jnp.float32)
    b = self.param("b", b_init, (settings.rank, *self.out_shape), jnp.float32)
    if self.dropout:
      x = dropout(self, x, settings.dropout)
    return lora.update(x, a.astype(cfg.dtype), b.astype(cfg.dtype), settings.scaling, linear)


def linear(x: jnp.ndarray,
           w: "jnp.ndarray | int8_base.QuantizedWeight | lora.AdaptedWeight") -> jnp.ndarray:
  """x [..., *w.shape[:n]] @ w -> [..., *w.shape[n:]]: the product of every linear map.

  A matrix contracts x's last axis (`projection.project`, with its weight gradient
  fitted to CPUs); attention's 3-axis weights contract one axis ([B, L, E] @ [E, H, D])
  or two ([B, L, H, D] @ [H, D, E]), as written out below. An adapted weight adds its
  low-rank update, computed the same way through the rank: the base's product is the
  unadapted one, so with B = 0 the output equals the base model's exactly. An int8
  base weight (`int8_base`) is x @ (q * scale).
  """
  if isinstance(w, lora.AdaptedWeight):
    return linear(x, w.base) + w.update(x)
  if isinstance(w, int8_base.QuantizedWeight):  # dequantized here, in the compute dtype
    return linear(x, w.dequantized())
  if w.ndim == 2:
    return project(x, w)
  if x.ndim == 3:  # embed -> heads x head_dim
    return jnp.einsum("ble,ehd->blhd", x, w)
  return jnp.einsum("blhd,hde->ble", x, w)  # heads x head_dim -> embed


class Dense(nn.Module):
  """x [..., in] -> [..., features] without a bias: {"kernel": [in, features]}."""
  features: int
  axes: tuple[str, str]
  config: Any
  scale: float = 1.0  # of the initial variance (`fan_in_init`)

  @nn.compact
  def __call__(self, x):
    kernel = weight(self, "kernel", (x.shape[-1], self.features),
                    fan_in_init(self.axes, scale=self.scale), self.config)
    return linear(x.astype(self.config.dtype), kernel)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def embedding_table(module: nn.Module, config: Any, stddev: float) -> jnp.ndarray:
  """`module`'s "embedding" [padded vocab, embed] (param dtype), normal with `stddev`; the
  input lookup and, tied, the output layer (`output_logits`)."""
  init = nn.with_logical_partitioning(nn.initializers.normal(stddev), ("vocab", "embed"))
  return module.param("embedding", init, (config.padded_vocab_size, config.embed_dim),
                      config.param_dtype)


def init_kv_cache(num_layers: int, scan: bool, batch_size: int, length: int, num_heads: int,
                  head_dim: int, dtype) -> dict | tuple[dict, ...]:
  """Empty {"k", "v"} [B, length, heads, head_dim] per layer: a tuple of one per layer,
  or with `scan` one with a leading layer axis (scanned over with the layers)."""
  shape = (batch_size, length, num_heads, head_dim)
  layer = lambda shape: {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
  if scan:
    return layer((num_layers, *shape))
  return tuple(layer(shape) for _ in range(num_layers))


def write_kv(layer_cache: dict, k_BxLxHxD, v_BxLxHxD, index) -> dict:
  """The layer's cache with the new keys and values written from slot `index` on."""
  write = lambda buffer, new: jax.lax.dynamic_update_slice(
      buffer, new.astype(buffer.dtype), (0, index, 0, 0))
  return {"k": write(layer_cache["k"], k_BxLxHxD), "v": write(layer_cache["v"], v_BxLxHxD)}


def output_logits(config: Any, hidden_BxLxE, embedding_VxE,
                  lm_head: Callable[[jnp.ndarray], jnp.ndarray] | None,
                  *, constrained: bool = True) -> jnp.ndarray:
  """Float32 logits [B, L, vocab_size]: through the embedding when `config.tie_embeddings`
  (after scaling by `config.tied_output_scale` if set: original T5), else `lm_head`.

  `constrained`: lay the logits out over the mesh's vocab axis, as the models' own
  output is; a loss projecting a chunk at a time leaves the layout to its chunks.
  """
  if config.tie_embeddings:
    if config.tied_output_scale is not None:
      hidden_BxLxE = hidden_BxLxE * config.tied_output_scale
    logits = jnp.einsum("ble,ve->blv", hidden_BxLxE, embedding_VxE.astype(config.dtype))
  else:
    logits = lm_head(hidden_BxLxE)
  logits = logits.astype(jnp.float32)
  if constrained:
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
  return logits[..., :config.vocab_size]

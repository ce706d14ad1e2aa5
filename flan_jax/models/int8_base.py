"""An int8 frozen base for LoRA (QLoRA-style; QLoRA itself stores 4-bit NF4).

With `LoraConfig(base_dtype="int8")` every linear map of the frozen base (attention's
q, k, v and o, the MLP, an untied output layer) is held as int8 values with one float32
scale per output channel, symmetric absmax: scale = max|w| / 127 over the weight's
input axes, q = round(w / scale) in [-127, 127], so that |w - q * scale| <= scale / 2.
`layers.weight` makes the pair (parameter `name`, int8, and `name + SCALE_SUFFIX`,
float32, shaped like the weight with each input axis 1) and `layers.linear` computes
x @ (q * scale) in the compute dtype: nothing else in the model sees the difference.
Embeddings, norms and biases stay as they are, as do the adapters (float32).

The base is quantized once, from the float base, when it is placed (`quantize`: a
pretrained checkpoint cast to param_dtype first, or the float model's random
initialisation from the seed), and again, identically, wherever a run's recorded base
is loaded back (`convert.load_orbax`). The fingerprint MODEL_DIR/lora_base.json
records is of the quantized base the adapters were trained on; quantization is
deterministic (a maximum and elementwise IEEE arithmetic), so the same float base
gives the same fingerprint on resume and in convert.

A model whose config asks for it initialises a blank int8 base (zeros, scales of one):
only its shapes and layout are used; the values always come from `quantize`.
"""

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

INT8 = "int8"
SCALE_SUFFIX = "_int8_scale"  # the scales of weight "query" are "query_int8_scale"
LEVELS = 127  # symmetric: -127..127, so that -w quantizes to -q


def enabled(config: Any) -> bool:
  """Whether a model config's LoRA asks for an int8 base."""
  settings = getattr(config, "lora", None)
  return settings is not None and settings.base_dtype == INT8


def float_config(config: Any) -> Any:
  """The same model with its base in param_dtype: what an int8 base is quantized from."""
  return dataclasses.replace(config, lora=dataclasses.replace(config.lora, base_dtype=None))


class QuantizedWeight(NamedTuple):
  """A linear map's int8 values and scales (1 on the input axes), as `layers.linear`
  applies them."""
  values: jnp.ndarray
  scale: jnp.ndarray  # in the compute dtype

  def dequantized(self) -> jnp.ndarray:
    return self.values.astype(self.scale.dtype) * self.scale


def scale_shape(shape: tuple[int, ...], in_axes: tuple[int, ...]) -> tuple[int, ...]:
  """The scales of a weight of `shape`: one per output channel, 1 along each input axis."""
  return tuple(1 if axis in in_axes else size for axis, size in enumerate(shape))


def quantize_weight(w: jnp.ndarray, scales_shape: tuple[int, ...]):
  """(int8 values, float32 scales) of `w`, absmax over the axes where the scales are 1
  (a leading layer axis of scanned layers keeps its own scales)."""
  axes = tuple(i for i, size in enumerate(scales_shape) if size == 1)
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=axes, keepdims=True)
  # An all-zero channel gets scale 1 (its values are 0 whatever the scale).
  scale = jnp.where(absmax > 0, absmax / LEVELS, 1.0)
  values = jnp.clip(jnp.round(w32 / scale), -LEVELS, LEVELS).astype(jnp.int8)
  if scale.shape != tuple(scales_shape):
    raise ValueError(f"scales {scale.shape} of a weight {w.shape} should be {scales_shape}")
  return values, scale


def quantize(params: Mapping, like: Mapping) -> dict:
  """`params` (a float base, with or without adapters) with each weight that `like` (the
  int8 model's parameter shapes) holds as int8 quantized; the rest as it is."""
  out = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      target = like.get(key)
      out[key] = quantize(value, target if isinstance(target, Mapping) else {})
    elif key + SCALE_SUFFIX in like:
      out[key], out[key + SCALE_SUFFIX] = quantize_weight(value, like[key + SCALE_SUFFIX].shape)
    else:
      out[key] = value
  return out


def is_quantized(params) -> bool:
  """Whether a parameter tree holds int8 weights (their scales beside them)."""
  return any(str(getattr(path[-1], "key", path[-1])).endswith(SCALE_SUFFIX)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def dequantize(params: Mapping) -> dict:
  """Each int8 weight as float32 q * scale (its scales dropped): the weights the
  int8 model computes with, for a merged export."""
  out = {}
  for key, value in params.items():
    if key.endswith(SCALE_SUFFIX):
      continue
    if isinstance(value, Mapping):
      out[key] = dequantize(value)
    elif key + SCALE_SUFFIX in params:
      out[key] = QuantizedWeight(jnp.asarray(value),
                                 jnp.asarray(params[key + SCALE_SUFFIX], jnp.float32)).dequantized()
    else:
      out[key] = value
  return out

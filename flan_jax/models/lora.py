"""LoRA: a trainable low-rank update beside a frozen linear map (Hu et al., 2021).

A targeted projection y = x @ W becomes y = x @ W + s * (dropout(x) @ A) @ B, with
A [*in, rank] and B [rank, *out]. PEFT's initialisation is kept, so that a run starts
from exactly its base model: A is uniform in +-1/sqrt(fan-in) (torch's default for a
Linear layer, which PEFT keeps for A), B is zero, and the update is 0 at step 0. The
scale s is alpha / rank, or alpha / sqrt(rank) with rsLoRA (Kalajdzievski, 2023).

Where it plugs in: every linear map of both families makes its weight with
`layers.weight` and applies it with `layers.linear`. When a model config's `lora`
targets the weight, `layers.weight` also creates its adapter beside it
(a submodule `<name>_lora` holding "a" and "b", float32 whatever the base's dtype,
with the base weight's logical axis names and a "lora_rank" axis the mesh never
shards) and returns an `AdaptedWeight`, which `layers.linear` applies. Names of the targets are the
issue-tracker's and PEFT's both: "q", "k", "v", "o" (or "q_proj", ... for the decoder),
the decoder's "gate", "up", "down" ("gate_proj", ...), T5's "wi_0", "wi_1" (gated) or
"wi", and "wo"; "lm_head" for an untied output layer; "all-linear" for every
projection but the output layer, as in PEFT.

The parameter tree then holds the base and the adapters side by side. Training splits
it (`partition`): the adapters are what the optimizer sees and checkpoints hold; the
base is frozen (no gradient, no optimizer state). `combine` puts them back together
for the model.
"""

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from flan_jax.errors import UserError

ADAPTER_SUFFIX = "_lora"  # the adapter of weight "query" is {"query_lora": {"a", "b"}}
RANK_AXIS = "lora_rank"  # logical axis of the rank: never sharded (training.mesh)
ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "lm_head"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which projections get adapters, and how large and how scaled they are.

  `target_modules`: names as in the module docstring. `dropout`: on the adapter's
  input only, while training (from the train step's dropout rng). `use_rslora`: scale
  by alpha / sqrt(rank) instead of alpha / rank, which keeps higher ranks learning.
  `base_dtype`: None keeps the frozen base in the model's param_dtype; "int8" holds its
  linear maps as int8 with a scale per output channel (`int8_base`, QLoRA-style).
  """
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] = ("q", "v")
  use_rslora: bool = False
  base_dtype: str | None = None

  def __post_init__(self):
    rank = self.rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
      raise UserError(f"LoraConfig.rank must be a whole number of at least 1, got {rank!r}.")
    alpha = self.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
      raise UserError(f"LoraConfig.alpha must be a number > 0, got {alpha!r}.")
    if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (
        0.0 <= self.dropout < 1.0):
      raise UserError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}.")
    if self.base_dtype not in (None, "int8"):
      raise UserError(f"LoraConfig.base_dtype must be None (the model's param_dtype) or 'int8', "
                      f"got {self.base_dtype!r}.")
    targets = self.target_modules
    if isinstance(targets, str):
      targets = (targets,)
    if not targets or not all(isinstance(t, str) for t in targets):
      raise UserError(f"LoraConfig.target_modules must be a non-empty list of names such as "
                      f"['q', 'v'], got {self.target_modules!r}.")
    # A list from gin or JSON becomes a tuple: the config stays hashable and compares equal.
    object.__setattr__(self, "target_modules", tuple(targets))

  @property
  def scaling(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  def layers(self, names: Mapping[str, tuple[str, ...]], family: str) -> frozenset[str]:
    """The layer names (ours: "query", "gate", "lm_head", ...) targeted in a family whose
    layers answer to `names` (layer -> the names a target may use for it); one clear
    error for a target the family does not have."""
    chosen = set()
    for target in self.target_modules:
      if target == ALL_LINEAR:
        chosen |= {layer for layer in names if layer != OUTPUT_LAYER}
        continue
      matches = {layer for layer, aliases in names.items() if target in aliases}
      if not matches:
        known = sorted({alias for aliases in names.values() for alias in aliases} | {ALL_LINEAR})
        raise UserError(f"LoraConfig.target_modules: {target!r} is not a projection of the "
                        f"{family} model; its projections are {', '.join(known)}.")
      chosen |= matches
    return frozenset(chosen)


def from_fields(value: "LoraConfig | Mapping | None") -> "LoraConfig | None":
  """A LoraConfig from itself or its fields (a model config read back from JSON)."""
  if value is None or isinstance(value, LoraConfig):
    return value
  if isinstance(value, Mapping):
    return LoraConfig(**value)
  raise UserError(f"lora must be a LoraConfig or None, got {value!r}.")


class AdaptedWeight(NamedTuple):
  """A base weight with its adapter, as `layers.linear` applies it: x @ base + update(x)."""
  base: jnp.ndarray
  update: Callable[[jnp.ndarray], jnp.ndarray]


def update(x, a, b, scaling: float, linear: Callable) -> jnp.ndarray:
  """scaling * (x @ a) @ b, each product `linear`'s (`layers.linear`)."""
  return scaling * linear(linear(x, a), b)


def adapter_shapes(shape: tuple[int, ...], in_axes: tuple[int, ...]):
  """(A's shape, B's shape) for a weight of `shape` whose input axes are `in_axes` (the
  leading ones, as `layers.linear` contracts them)."""
  count = len(in_axes)
  if tuple(in_axes) != tuple(range(count)):
    raise ValueError(f"LoRA needs a weight's input axes first, got {in_axes} for {shape}.")
  return shape[:count], shape[count:]


def a_initializer(in_axes: tuple[int, ...]):
  """PEFT's A: uniform in +-1/sqrt(fan-in) (torch's Linear default, kaiming_uniform with
  a=sqrt(5)), over the input axes; the rank axis is last."""
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                              in_axis=tuple(in_axes), out_axis=-1)


def is_adapter(path: tuple[str, ...]) -> bool:
  """Whether a parameter path names an adapter leaf."""
  return any(str(key).endswith(ADAPTER_SUFFIX) for key in path)


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def partition(params, config) -> tuple[Any, Any]:
  """(trainable, frozen) halves of a parameter tree: with LoRA (`config.lora`), the
  adapters and the base; without, every parameter and None."""
  if getattr(config, "lora", None) is None:
    return params, None
  return _select(params, True), _select(params, False)


def _select(tree, adapters: bool, path=()):
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    here = (*path, key)
    if isinstance(value, Mapping):
      part = _select(value, adapters, here)
      if part:
        out[key] = part
    elif is_adapter(here) == adapters:
      out[key] = value
  return out


def combine(trainable, frozen):
  """The whole parameter tree from `partition`'s halves (frozen None: trainable is it)."""
  if frozen is None:
    return trainable
  if not isinstance(trainable, Mapping) or not isinstance(frozen, Mapping):
    raise ValueError("LoRA halves must both be dicts")
  out = dict(frozen)
  for key, value in trainable.items():
    out[key] = combine(value, out[key]) if key in out else value
  return out


def has_adapters(params) -> bool:
  return any(is_adapter(_names(path)) for path, _ in
             jax.tree_util.tree_flatten_with_path(params)[0])


def adapter_count(params) -> int:
  """The number of adapter values in a parameter tree."""
  return sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
             if is_adapter(_names(path)))

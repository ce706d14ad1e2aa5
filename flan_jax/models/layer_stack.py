"""A stack of identical transformer layers: a Python loop or `nn.scan`, optionally rematerialised.

Unscanned, layer i is a submodule `layers_{i}` (the layout checkpoints are converted
in). Scanned, there is one submodule `layers` whose parameters carry a leading axis
of length num_layers, logically named "layers": compile time stops growing with
depth. `stack_layers` / `unstack_layers` convert a parameter tree between the two
layouts, so a checkpoint imported unscanned trains scanned and back.

Rematerialisation trades compute for memory: under a policy other than "none" the
layer's activations are recomputed in the backward pass, except those the policy
saves (e.g. "dots": the matmul outputs).
"""

import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models.projection import PROJECTION

_policies = jax.checkpoint_policies
# The "dots" policies also save `project`'s outputs: its custom VJP hides the matmul
# inside it from them, which would be recomputed in the backward pass.
_projections = _policies.save_only_these_names(PROJECTION)
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation: keep every activation
    "full": _policies.nothing_saveable,
    "dots": _policies.save_from_both_policies(_policies.dots_saveable, _projections),
    "dots_with_no_batch_dims": _policies.save_from_both_policies(
        _policies.dots_with_no_batch_dims_saveable, _projections),
}


def dropout(module: nn.Module, x, rate: float):
  """Inverted dropout while training, the identity otherwise.

  Training is told apart by the rng: the train step applies the model with a "dropout"
  rng, evaluation and decoding without one, so no `deterministic` flag is threaded
  through every call.
  """
  if not rate or not module.has_rng("dropout"):
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def check_remat_policy(name: str) -> None:
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={name!r} is not one of {sorted(REMAT_POLICIES)}.")


def apply_layers(block: type[nn.Module], config: Any, x, broadcast_args: tuple, per_layer,
                 *, num_layers: int, scan: bool, remat_policy: str = "none", name: str = "layers"):
  """Runs `num_layers` copies of `block` over x; call from inside a compact method.

  `block(config)(x, *broadcast_args, layer_state) -> (x, layer_state)`. `per_layer` is
  each layer's state (e.g. its KV cache) or None: a tuple of one per layer unscanned,
  one pytree with a leading layer axis scanned. Returns (x, new per_layer).
  """
  check_remat_policy(remat_policy)
  if remat_policy != "none":
    # Under scan the loop already stops XLA from merging recomputation with the
    # forward pass, so the extra CSE barrier is only needed unscanned.
    block = nn.remat(block, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan)
  if scan:
    scanned = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(broadcast_args) + (0,), length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(config, name=name)(x, *broadcast_args, per_layer)
  outputs = []
  for i in range(num_layers):
    x, state = block(config, name=f"{name}_{i}")(
        x, *broadcast_args, None if per_layer is None else per_layer[i])
    outputs.append(state)
  return x, None if per_layer is None else tuple(outputs)


def take_cache_rows(cache, rows, scan: bool):
  """A decoding cache with its batch rows reordered (beam search keeps the best beams).

  Caches are dicts whose "layers" leaves are [B, ...] ([num_layers, B, ...] scanned),
  whose "index" is the next slot (shared by all rows), and whose other leaves are
  [B, ...].
  """
  def take(path, leaf):
    if jnp.ndim(leaf) == 0:
      return leaf
    in_layers = path[0].key == "layers"
    return jnp.take(leaf, rows, axis=1 if (in_layers and scan) else 0)
  return jax.tree_util.tree_map_with_path(take, cache)


_LAYER_KEY = re.compile(r"^(.*)_(\d+)$")


def stack_layers(tree, name: str = "layers"):
  """{"layers_0": p0, "layers_1": p1, ...} -> {"layers": stacked}, at every depth."""
  if not isinstance(tree, dict):
    return tree
  out = {k: stack_layers(v, name) for k, v in tree.items()}
  keys = [k for k in tree if (m := _LAYER_KEY.match(k)) and m.group(1) == name]
  if keys:
    keys.sort(key=lambda k: int(_LAYER_KEY.match(k).group(2)))
    layers = [out.pop(k) for k in keys]
    out[name] = jax.tree.map(lambda *leaves: np.stack([np.asarray(l) for l in leaves]), *layers)
  return out


def unstack_layers(tree, name: str = "layers"):
  """The inverse of `stack_layers`: {"layers": stacked} -> {"layers_0": ..., ...}."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == name:
      num_layers = jax.tree.leaves(value)[0].shape[0]
      for i in range(num_layers):
        out[f"{name}_{i}"] = jax.tree.map(lambda leaf: leaf[i], value)
    else:
      out[key] = unstack_layers(value, name)
  return out

"""Which frozen base a LoRA run's adapters belong to: its path and a content fingerprint.

A LoRA run's checkpoints hold adapters only. They mean something only on top of the
base they were trained on, so MODEL_DIR records that base (LORA_BASE_FILE: the path
it was loaded from, None for a random initialisation, and a fingerprint of its
values), and a resumed run refuses a base whose fingerprint differs, whatever its path
says (a directory overwritten with another model, a different seed).

The fingerprint is computed on the devices, from the placed parameters, so it needs
no copy on one host and is the same on any mesh and any number of processes: per
parameter, two sums of its values' bit patterns as 32-bit integers (one plain, one
weighted by position), which wrap around and so do not depend on the order a
sharded reduction adds in; then a SHA-256 of every parameter's path, shape, dtype and
sums. It tells bases apart; it is not a defence against someone forging one.
"""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import paths
from flan_jax.errors import UserError
from flan_jax.model_dir import LORA_BASE_FILE


def _bits(x: jnp.ndarray) -> jnp.ndarray:
  """x's values as uint32 bit patterns (16-bit floats widened exactly first)."""
  if x.dtype.itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


@jax.jit
def _sums(tree):
  def per_leaf(x):
    bits = _bits(x)
    # Each value's flat index, built per axis: reshaping a sharded parameter flat could
    # gather it whole onto each device.
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
      index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
      stride *= x.shape[axis]
    weights = index * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])
  return jax.tree.map(per_leaf, tree)


def _host_sums(params):
  """Each leaf's sums: of host arrays (a base read back for eval, infer or convert) one
  leaf at a time, so that the device never holds a second copy of the model (on the CPU
  backend, that copy would be in host memory too); of device arrays, in one call."""
  if all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(params)):
    return jax.tree.map(lambda leaf: jax.device_get(_sums(leaf)), params)
  return jax.device_get(_sums(params))


def fingerprint(params) -> str:
  """A hex digest of a parameter tree's paths, shapes, dtypes and values."""
  sums = jax.tree_util.tree_flatten_with_path(_host_sums(params))[0]
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  digest = hashlib.sha256()
  for (path, leaf), (_, leaf_sums) in zip(leaves, sums):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    digest.update(json.dumps([name, list(leaf.shape), str(leaf.dtype),
                              [int(v) for v in np.asarray(leaf_sums)]]).encode())
  return digest.hexdigest()


def record(source: str | None, base_fingerprint: str) -> dict:
  """The record of a base; a local path made absolute, so that eval, infer and convert
  find the base from any working directory (a quickstart's base is relative)."""
  return {"path": paths.absolute(source) if source else None, "fingerprint": base_fingerprint}


def read(model_dir: str) -> dict:
  """A LoRA run's record of its base: {"path", "fingerprint"}."""
  path = paths.join(model_dir, LORA_BASE_FILE)
  if not paths.exists(path):
    raise UserError(f"{model_dir} holds LoRA adapters but no {LORA_BASE_FILE} saying which base "
                    "they were trained on.")
  return paths.read_json(path)


def check_same(model_dir: str, recorded: dict, source: str, base) -> None:
  """One clear error where `base` (loaded from `source`) is not the recorded base. Every
  process calls it: the fingerprint of a base spread over processes is computed by all."""
  now = fingerprint(base)
  if recorded.get("fingerprint") != now:
    where = recorded.get("path") or "a random initialisation"
    raise UserError(
        f"{model_dir} holds LoRA adapters trained on the base from {where} (fingerprint "
        f"{str(recorded.get('fingerprint'))[:12]}), but the base from {source} has fingerprint "
        f"{now[:12]}: adapters only fit the base they were trained on. Resume with that base "
        "(INITIAL_CHECKPOINT_PATH, seed), or choose a new MODEL_DIR.")


def check_or_write(model_dir: str, resuming: bool, source: str | None, base) -> None:
  """On a fresh run, records the base in MODEL_DIR; on a resumed one, refuses a base that
  is not the recorded one. Every process checks; process 0 writes."""
  path = paths.join(model_dir, LORA_BASE_FILE)
  if resuming and paths.exists(path):
    check_same(model_dir, paths.read_json(path), source or "a random initialisation", base)
    return
  current = record(source, fingerprint(base))  # on every process: a collective computation
  if jax.process_index() == 0:
    paths.write_json(path, current, indent=1)

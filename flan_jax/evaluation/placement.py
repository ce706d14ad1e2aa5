"""Where evaluation rows run: one device, or split over a mesh's data axes and hosts.

Every host reads the same evaluation examples and builds the same batches (cheap next
to the model). `put` turns a batch's numpy array into the array the compiled function
takes; sharded, each host hands over only the rows of its own devices, so the rows are
computed once, spread over the data axes and the hosts. `get` brings the result back
whole to every host. Parameters are not touched here: callers place them once, with
the training shardings, before evaluation starts.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding


@dataclasses.dataclass(frozen=True)
class RowPlacement:
  put: Callable[[np.ndarray], jax.Array] = jnp.asarray
  get: Callable[[jax.Array], np.ndarray] = np.asarray
  row_multiple: int = 1  # a batch's rows must divide evenly over the devices

  def batch_size(self, requested: int) -> int:
    """`requested` rounded up to a multiple of the devices the rows split over."""
    return -(-requested // self.row_multiple) * self.row_multiple


def sharded_rows(sharding: NamedSharding) -> RowPlacement:
  """Rows split as `sharding` splits a batch's first axis (training's batch sharding)."""
  spec = sharding.spec[0] if sharding.spec else None
  axes = spec if isinstance(spec, tuple) else ((spec,) if spec else ())
  multiple = int(np.prod([sharding.mesh.shape[a] for a in axes])) if axes else 1

  def put(array: np.ndarray) -> jax.Array:
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def get(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
      return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))

  return RowPlacement(put, get, multiple)

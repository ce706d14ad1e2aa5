"""The device mesh and the rules that map logical axis names onto it.

Mesh axes are `data` (pure data parallelism), `fsdp` (data parallel with parameters
and optimizer state sharded) and `tensor` (heads and MLP columns split). A mesh
shape entry of -1 takes whatever devices are left, so the default (-1, 1, 1) is
plain data parallelism over every device of every host.
"""

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes). Activations' batch spans both data-like axes.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("layers", None),  # the stacked-layer axis of scanned parameters
    ("relpos_buckets", None),  # T5's relative position bias table
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise UserError(f"mesh shape {tuple(shape)} must have one entry per axis {MESH_AXES}.")
  if shape.count(-1) > 1:
    raise UserError(f"mesh shape {tuple(shape)}: at most one axis may be -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise UserError(
        f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are "
        "available; make the product of the axes equal the device count.")
  return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def check_batch_fits(mesh: Mesh, global_batch_size: int) -> None:
  """The global batch's rows must split evenly over the devices of the data-like axes."""
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size < 1 or global_batch_size % rows:
    raise UserError(
        f"BATCH_SIZE={global_batch_size} does not split evenly over the {rows} devices of "
        f"the data and fsdp axes of mesh {dict(mesh.shape)}: use a multiple of {rows}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [batch, length] array split over the data-like axes."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

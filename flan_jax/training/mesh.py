"""The device mesh and the rules that map logical axis names onto it.

Mesh axes are `data` (pure data parallelism), `fsdp` (data parallel with parameters
and optimizer state sharded) and `tensor` (heads and MLP columns split). A mesh
shape entry of -1 takes whatever devices are left, so the default (-1, 1, 1) is
plain data parallelism over every device of every host.

Devices are laid out by jax's mesh utilities, which know the interconnect: within a
slice (the ICI network of a TPU slice, or one GPU host) `mesh_shape` splits the
devices; across slices or hosts (the slower DCN network) `dcn_mesh_shape` splits
the slices, and each mesh axis spans ici x dcn devices. Put data parallelism on DCN
(e.g. mesh (1, 8, 1) and dcn (2, 1, 1) for 2 hosts of 8 GPUs): its gradients cross
the slow network once per step, while fsdp and tensor traffic stays on the fast one.
"""

import contextlib
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax.errors import UserError, check_whole_number

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
    ("lora_rank", None),  # a LoRA adapter's rank: small, kept whole on every device
)


@contextlib.contextmanager
def on_mesh(mesh: Mesh):
  """Traces inside place the model on `mesh`: its logical axis names resolve by
  LOGICAL_AXIS_RULES, and kernels XLA cannot partition (splash attention) run per
  shard. Training's step and initialisation run in it, and so does evaluation."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def _resolve(shape: Sequence[int], count: int, what: str) -> tuple[int, ...]:
  """`shape` with its -1 (if any) filled so that the axes multiply to `count`."""
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise UserError(f"{what} {tuple(shape)} must have one entry per axis {MESH_AXES}.")
  if shape.count(-1) > 1:
    raise UserError(f"{what} {tuple(shape)}: at most one axis may be -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    shape[shape.index(-1)] = count // known
  if math.prod(shape) != count:
    raise UserError(
        f"{what} {tuple(shape)} needs {math.prod(shape)} devices but {count} are available; "
        "make the product of the axes equal that count.")
  return tuple(shape)


def _slices_are_granules(devices) -> bool:
  """What DCN connects: TPU slices where the devices span several, else hosts (processes).

  CPU and GPU devices report slice 0 whatever their host, so one slice means hosts."""
  return len({getattr(d, "slice_index", None) for d in devices}) > 1


def device_grid(shape: Sequence[int] = (-1, 1, 1), dcn_shape: Sequence[int] | None = None,
                devices=None) -> np.ndarray:
  """The devices arranged as the mesh (an array of shape ici x dcn, axis by axis)."""
  devices = list(devices if devices is not None else jax.devices())
  if dcn_shape is None:
    return mesh_utils.create_device_mesh(_resolve(shape, len(devices), "mesh shape"), devices)
  by_slice = _slices_are_granules(devices)
  granules = {d.slice_index if by_slice else d.process_index for d in devices}
  dcn_shape = _resolve(dcn_shape, len(granules), "DCN mesh shape (slices or hosts)")
  shape = _resolve(shape, len(devices) // len(granules), "mesh shape (per slice or host)")
  return mesh_utils.create_hybrid_device_mesh(shape, dcn_shape, devices,
                                              process_is_granule=not by_slice)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None,
              dcn_shape: Sequence[int] | None = None) -> Mesh:
  """A mesh over `devices` (all of them by default): `shape` alone splits them all;
  with `dcn_shape`, `shape` splits each slice (or host) and `dcn_shape` the slices."""
  return Mesh(device_grid(shape, dcn_shape, devices), MESH_AXES)


def check_batch_fits(mesh: Mesh, global_batch_size: int) -> None:
  """The global batch's rows must split evenly over the devices of the data-like axes."""
  check_whole_number("BATCH_SIZE", global_batch_size, 1)
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % rows:
    raise UserError(
        f"BATCH_SIZE={global_batch_size} does not split evenly over the {rows} devices of "
        f"the data and fsdp axes of mesh {dict(mesh.shape)}: use a multiple of {rows}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [batch, length] array split over the data-like axes."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

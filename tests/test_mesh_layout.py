"""How devices are laid out on the mesh: jax's mesh utilities, with ICI and DCN shapes."""

import dataclasses

import numpy as np
import pytest

from flan_jax.errors import UserError
from flan_jax.training.mesh import device_grid, make_mesh


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "cpu"


@dataclasses.dataclass(frozen=True)
class FakeSliceDevice(FakeDevice):
  slice_index: int = 0


def _processes(grid) -> np.ndarray:
  return np.vectorize(lambda d: d.process_index)(grid)


def test_dcn_splits_hosts_and_ici_splits_each_hosts_devices():
  # Two hosts of 4 devices, enumerated interleaved: a plain reshape would put both
  # hosts' devices in every fsdp x tensor block.
  devices = [FakeSliceDevice(i, i % 2) for i in range(8)]  # CPUs and GPUs: all slice 0
  grid = device_grid((1, 2, 2), dcn_shape=(2, 1, 1), devices=devices)
  assert grid.shape == (2, 2, 2)
  # The data axis crosses hosts (DCN); fsdp and tensor stay inside one host (ICI).
  np.testing.assert_array_equal(_processes(grid), [[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
  assert sorted(d.id for d in grid.ravel()) == list(range(8))


def test_minus_one_fills_per_host_and_across_hosts():
  devices = [FakeDevice(i, i // 4) for i in range(8)]
  assert device_grid((1, -1, 1), dcn_shape=(-1, 1, 1), devices=devices).shape == (2, 4, 1)
  assert device_grid((-1, 1, 1), devices=devices).shape == (8, 1, 1)


def test_tpu_slices_are_the_dcn_granules_not_hosts():
  # Two slices of two hosts each: DCN joins the slices, a slice's hosts share ICI.
  devices = [FakeSliceDevice(i, i // 2, slice_index=i // 4) for i in range(8)]
  grid = device_grid((1, 1, -1), dcn_shape=(2, 1, 1), devices=devices)
  slices = np.vectorize(lambda d: d.slice_index)(grid)
  np.testing.assert_array_equal(slices, [[[0, 0, 0, 0]], [[1, 1, 1, 1]]])


@pytest.mark.parametrize("shape, dcn_shape, message", [
    ((2, 2, 1), (3, 1, 1), "DCN mesh shape"),   # 2 hosts cannot split 3 ways
    ((3, 1, 1), (2, 1, 1), "per slice or host"),  # 4 devices per host, not 3
    ((-1, -1, 1), None, "at most one axis"),
    ((2, 2), None, "one entry per axis"),
])
def test_shapes_that_do_not_fit_the_devices_are_one_clear_error(shape, dcn_shape, message):
  devices = [FakeDevice(i, i // 4) for i in range(8)]
  with pytest.raises(UserError, match=message):
    device_grid(shape, dcn_shape, devices)


def test_the_real_cpu_mesh_holds_every_device_once():
  mesh = make_mesh((-1, 1, 1), dcn_shape=(1, 1, 1))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert mesh.devices.size == len(set(mesh.devices.ravel()))

"""MFU: the model FLOPs a run computes per second, over what its devices could compute.

The model's FLOPs come from its config (`models.flops`: 6 per weight and token in full
finetuning; with LoRA 4 per frozen base weight, whose weight gradient is never
computed, and 6 per adapter weight); the devices' peak from the
table below, by jax's `device_kind`: dense bf16 matmul FLOP/s per jax device, from
the vendors' datasheets (the figures MFU is usually quoted against, float32 runs
included). A device not in the table (a CPU, a new chip) gets no MFU unless the run
is given its peak (`TrainerConfig.peak_flops_per_device`, gin's
`train.peak_flops_per_device`).

The trainer reports MFU over each logging window's wall time, the window its tokens
per second are measured over: the first window includes compilation, and data
waits and checkpoints in a window count against it (evaluation does not: the window
restarts after it).
"""

from typing import Sequence

# (part of device_kind, peak FLOP/s per jax device); the first match counts, so more
# specific names come first. TPU v2 and v3 show each core as a device; later TPUs and
# GPUs show one per chip.
PEAK_FLOPS_PER_DEVICE: Sequence[tuple[str, float]] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),  # GH200 too: an H100-class GPU
    ("H800", 989e12),
    ("GB200", 2500e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("TPU v2", 22.5e12),
    ("TPU v3", 61.5e12),
    ("TPU v4 lite", 138e12),  # v4i
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports itself as "TPU v5"
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
)


def peak_flops_per_device(device_kind: str, given: float | None = None) -> float | None:
  """`given` if set, else the table's peak for `device_kind`; None if unknown."""
  if given is not None:
    return float(given)
  for name, peak in PEAK_FLOPS_PER_DEVICE:
    if name.lower() in device_kind.lower():
      return peak
  return None


def mfu(flops: float, seconds: float, peak_per_device: float, devices: int) -> float:
  """The fraction of `devices` devices' peak that `flops` model FLOPs in `seconds` use."""
  return flops / max(seconds, 1e-9) / (peak_per_device * devices)

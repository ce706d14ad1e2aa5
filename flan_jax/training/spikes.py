"""Spikes: steps whose loss, gradient norm or weights' norm leap far above their recent median.

A learning rate far too high need not make anything non-finite at once. Its first
large update blows the weights up (to 1e10 and more); the logits saturate, a byte-level
model's loss settles at about ln(259), where a random model starts anyway, and its
gradient vanishes. The loss shows nothing and the run only turns non-finite steps
later, after finite but ruined checkpoints were saved. So each step is judged on
three numbers, each against `factor` times its median over the last `WINDOW` steps:

- the loss and the gradient norm, once `warmup` steps are in the window: the first
  steps' values move fast (the learning rate warms up, the loss falls quickly), so
  they are no reference yet;
- the weights' norm after the step, from the first step on: the starting weights are
  a reference already, and a blow-up shows there in the very step that makes it.

Medians rather than means: a spike does not move a median, and a spiking (or
non-finite) step's values never enter the window, so the steps after one are judged
against normal ones. The window lives in the train state: it is saved with every
checkpoint, and a resumed run judges as a straight one would.

What a spike does (`action`):
- "stop": the run stops with an error naming the step and what spiked. Nothing from
  a spiking step on is saved, and checkpoints holding weights that spiked (a loss or
  gradient spike at step t is measured on the weights of step t - 1) are moved aside,
  so rerunning resumes from weights from before the spike.
- "skip": the step's update is not applied (weights and optimizer state stay as they
  were, its count too, so the learning-rate schedule waits) and training goes on; a
  non-finite step is skipped too. It is decided on the device inside the step, so it
  costs no extra wait for the host. Skipped steps are counted (`skipped_steps`), and
  `MAX_SKIPS_IN_A_ROW` in a row stop the run as "stop" would: such a run is no
  longer training.
"""

import dataclasses

import flax.struct
import jax.numpy as jnp
import optax

from flan_jax.errors import UserError

ACTIONS = ("stop", "skip")
WINDOW = 100  # steps in the median; fixed, as it is the shape of a saved array
MAX_SKIPS_IN_A_ROW = 10
WATCHED = ("loss", "grad_norm", "param_norm")
DESCRIBED = {"loss": "the loss", "grad_norm": "the gradient norm",
             "param_norm": "the weights' norm"}


@dataclasses.dataclass(frozen=True)
class SpikeRule:
  factor: float | None = 10.0  # None: no spike is ever flagged
  warmup: int = 10
  action: str = "stop"

  def __post_init__(self):
    if self.factor is not None and not self.factor > 1:
      raise UserError(f"spike_factor must be greater than 1, or None to flag no spikes "
                      f"(got {self.factor}).")
    if not 1 <= self.warmup <= WINDOW:
      raise UserError(f"spike_warmup must be between 1 and {WINDOW} steps (got {self.warmup}).")
    if self.action not in ACTIONS:
      raise UserError(f"spike_action={self.action!r} is not one of {list(ACTIONS)}.")


class SpikeWindow(flax.struct.PyTreeNode):
  """The watched values of the last WINDOW steps that were not spikes (NaN: none yet)."""
  values_3xW: jnp.ndarray  # rows in WATCHED's order
  next_slot: jnp.ndarray  # where the next step's values go, overwriting the oldest
  skipped_steps: jnp.ndarray  # steps skipped in the whole run
  skips_in_a_row: jnp.ndarray  # ending at the latest step


def start(params) -> SpikeWindow:
  """A window holding only the starting weights' norm."""
  values_3xW = jnp.full((len(WATCHED), WINDOW), jnp.nan, jnp.float32)
  values_3xW = values_3xW.at[WATCHED.index("param_norm"), 0].set(optax.tree.norm(params))
  zero = jnp.zeros((), jnp.int32)
  return SpikeWindow(values_3xW=values_3xW, next_slot=zero + 1, skipped_steps=zero,
                     skips_in_a_row=zero)


def judge(window: SpikeWindow, rule: SpikeRule, values: dict[str, jnp.ndarray]):
  """({name: spiked} for WATCHED, {name_median: median}) of one step's values."""
  row = dict(zip(WATCHED, window.values_3xW))
  medians = {name: jnp.nanmedian(row[name]) for name in WATCHED}
  if rule.factor is None:
    spiked = {name: jnp.zeros((), bool) for name in WATCHED}
  else:
    spiked = {name: values[name] > rule.factor * medians[name] for name in WATCHED}
    warmed_up = jnp.isfinite(row["loss"]).sum() >= rule.warmup
    for name in ("loss", "grad_norm"):
      spiked[name] &= warmed_up
  return spiked, {f"{name}_median": median for name, median in medians.items()}


def record(window: SpikeWindow, values: dict[str, jnp.ndarray], normal, skipped) -> SpikeWindow:
  """The window after a step: its values added if `normal`; the skip counts updated."""
  column = jnp.stack([values[name] for name in WATCHED]).astype(jnp.float32)
  added = window.values_3xW.at[:, window.next_slot].set(column)
  return SpikeWindow(
      values_3xW=jnp.where(normal, added, window.values_3xW),
      next_slot=jnp.where(normal, (window.next_slot + 1) % WINDOW, window.next_slot),
      skipped_steps=window.skipped_steps + skipped,
      skips_in_a_row=jnp.where(skipped, window.skips_in_a_row + 1, 0))


def describe(host_metrics, rule: SpikeRule) -> str:
  """What spiked in a step, from its metrics on the host: "the loss 41.2 is 12.5 times
  its median 3.3 over recent steps"."""
  parts = []
  for name in WATCHED:
    if host_metrics["spikes"][name]:
      value, median = float(host_metrics[name]), float(host_metrics[f"{name}_median"])
      parts.append(f"{DESCRIBED[name]} {value:.4g} is {value / median:.3g} times its median "
                   f"{median:.4g} over recent steps")
  if not parts:
    parts.append(f"loss {float(host_metrics['loss'])}, gradient norm "
                 f"{float(host_metrics['grad_norm'])}, weights' norm "
                 f"{float(host_metrics['param_norm'])} (not all finite)")
  return "; ".join(parts) + (f" (spike_factor {rule.factor:g})" if rule.factor else "")


def first_suspect_step(host_metrics, step: int) -> int:
  """The first step whose weights may carry the spike: a loss or gradient spike at
  `step` is measured on the previous step's weights, a weights' spike on its own."""
  spikes = host_metrics["spikes"]
  return step - 1 if spikes["loss"] or spikes["grad_norm"] else step

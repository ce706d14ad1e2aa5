"""Orbax checkpoints of the train state: every N steps, at the end, resumable.

Orbax writes each step into a temporary directory and renames it only once complete,
so an interrupted save never leaves a checkpoint that looks finished; the latest
finished step is what a restarted run resumes from.
"""

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from flan_jax import paths
from flan_jax.training.train_step import TrainState


class Checkpointer:
  """Saves and restores TrainStates under `directory` (MODEL_DIR/checkpoints)."""

  def __init__(self, directory: str, keep: int | None = 3):
    self._directory = paths.absolute(directory)  # gs://... stays as it is
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def set_aside(self, step: int) -> str:
    """Renames a damaged step's directory (kept for a look, no longer a checkpoint), so
    the run can save that step again; returns the new path."""
    source = paths.join(self._directory, str(step))
    target = f"{source}.damaged"
    if jax.process_index() == 0:
      suffix = 1
      while paths.exists(target):
        target, suffix = f"{source}.damaged{suffix}", suffix + 1
      paths.rename(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    return target

  def all_steps(self) -> list[int]:
    """The finished steps, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract_state: TrainState) -> TrainState:
    """Restore `step` into the shapes, dtypes and shardings of `abstract_state`."""
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def save(self, step: int, state: TrainState) -> None:
    """Starts saving `step` (asynchronously); `close` waits for it to finish."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    """Until the saves in flight are finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

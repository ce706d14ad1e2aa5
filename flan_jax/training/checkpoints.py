"""Orbax checkpoints of the train state: every N steps, at the end, resumable.

Orbax writes each step into a temporary directory and renames it only once complete,
so an interrupted save never leaves a checkpoint that looks finished; the latest
finished step is what a restarted run resumes from.
"""

import os

import orbax.checkpoint as ocp

from flan_jax.training.train_step import TrainState


class Checkpointer:
  """Saves and restores TrainStates under `directory` (MODEL_DIR/checkpoints)."""

  def __init__(self, directory: str, keep: int | None = 3):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

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

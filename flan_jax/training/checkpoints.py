"""Orbax checkpoints of the train state: every N steps, at the end, resumable.

Orbax writes each step into a temporary directory and renames it only once complete,
so an interrupted save never leaves a checkpoint that looks finished; the latest
finished step is what a restarted run resumes from.

A save that cannot be written (a full disk, a quota) costs only itself: before saving,
the free space is compared with the state's size, and a save that fails while being
written is reported as soon as it fails (`raise_if_failed`, called every step), in
one line naming the step, the cause and the intact checkpoint to resume from, in
place of orbax's tracebacks from each of its writer threads. (Tensorstore may still
print "Event loop is closed" tracebacks for its writes left pending: it prints them
itself, past Python's hooks.)
"""

import logging
import re
import shutil

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from flan_jax import paths
from flan_jax.errors import UserError
from flan_jax.training import spikes
from flan_jax.training.train_step import TrainState

# Room a save needs beyond the state's bytes (metadata, and estimates that fall short).
_SPACE_MARGIN = 1.05
_SPACE_SLACK_BYTES = 16 << 20
_NOISY_LOGGERS = ("absl", "asyncio")


class _OneLineOrbaxErrors(logging.Filter):
  """Orbax's writer threads (and their asyncio tasks) each log a failed write with its
  traceback; the run reports the failure once itself, so their records keep only
  their first line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and ("orbax" in record.pathname or
                                            record.name == "asyncio"):
      record.msg, record.args = record.getMessage().splitlines()[0][:300], None
      record.exc_info = record.exc_text = None
    return True


def _cause(error: BaseException) -> str:
  """The operating system's reason ("No space left on device") if the error carries one."""
  text = str(error)
  reason = re.search(r"Failed to write [^:]*: ([^\[\]\n]+)", text) or re.search(
      r"\[Errno \d+\] ([^:\n]+)", text)
  return reason.group(1).strip() if reason else f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


class Checkpointer:
  """Saves and restores TrainStates under `directory` (MODEL_DIR/checkpoints)."""

  def __init__(self, directory: str, keep: int | None = 3):
    self._directory = paths.absolute(directory)  # gs://... stays as it is
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())  # so its saved tree can be read first
    self._in_flight: int | None = None  # the step being written in the background
    # Kept for the life of the process: orbax's pending tasks log their failures as late
    # as the interpreter's exit, after the checkpointer has closed.
    for logger in _NOISY_LOGGERS:
      if not any(isinstance(f, _OneLineOrbaxErrors) for f in logging.getLogger(logger).filters):
        logging.getLogger(logger).addFilter(_OneLineOrbaxErrors())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def set_aside(self, step: int, why: str = "damaged") -> str:
    """Renames a step's directory to <step>.<why> (kept for a look, no longer a
    checkpoint), so the run can save that step again; returns the new path."""
    source = paths.join(self._directory, str(step))
    target = f"{source}.{why}"
    if jax.process_index() == 0:
      suffix = 1
      while paths.exists(target):
        target, suffix = f"{source}.{why}{suffix}", suffix + 1
      paths.rename(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    return target

  def all_steps(self) -> list[int]:
    """The finished steps, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract_state: TrainState) -> TrainState:
    """Restore `step` into the shapes, dtypes and shardings of `abstract_state`.

    A checkpoint saved before the state carried its spike window gets a fresh one.
    """
    if "spikes" in self._manager.item_metadata(step).tree:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    older = {"step": abstract_state.step, "params": abstract_state.params,
             "opt_state": abstract_state.opt_state}
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(older))
    logging.info("Checkpoint %d predates spike detection: its window starts afresh.", step)
    window = jax.jit(spikes.start, out_shardings=jax.tree.map(
        lambda leaf: leaf.sharding, abstract_state.spikes))(restored["params"])
    return TrainState(**restored, spikes=window)

  def save(self, step: int, state: TrainState) -> None:
    """Starts saving `step` (asynchronously); `close` waits for it to finish."""
    self.wait()  # orbax would wait for the previous save anyway; this names its failure
    self._check_space(step, state)
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:
      raise self._failure(step, e) from None
    self._in_flight = step

  def _check_space(self, step: int, state: TrainState) -> None:
    if paths.is_remote(self._directory):
      return  # buckets have no free-space figure; a failed write is still reported
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) * _SPACE_MARGIN
    needed += _SPACE_SLACK_BYTES
    free = shutil.disk_usage(self._directory).free
    if free < needed:
      raise UserError(
          f"not enough disk space to save checkpoint {step}: it needs about "
          f"{needed / 2**30:.2f} GiB in {self._directory} but {free / 2**30:.2f} GiB are free. "
          f"{self._resume_hint()}")

  def _resume_hint(self) -> str:
    latest = self._manager.latest_step()
    if latest is None:
      return "No checkpoint was saved yet."
    return (f"Checkpoint {latest} is intact: free space (or point MODEL_DIR elsewhere, "
            "copying its contents) and rerun to resume from it.")

  def _failure(self, step: int, error: BaseException) -> UserError:
    self._in_flight = None
    try:  # let orbax finish its threads and drop the partial step
      self._manager.wait_until_finished()
    except Exception:
      pass
    self._manager.reload()
    return UserError(f"saving checkpoint {step} to {self._directory} failed: {_cause(error)}. "
                     f"{self._resume_hint()}")

  def raise_if_failed(self) -> None:
    """Raises the failure of the save in flight, if it has failed (cheap: call often)."""
    if self._in_flight is not None and not self._manager.is_saving_in_progress():
      self.wait()  # finished: returns at once, or raises what went wrong

  def wait(self) -> None:
    """Until the saves in flight are finished."""
    if self._in_flight is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._failure(self._in_flight, e) from None
    self._in_flight = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

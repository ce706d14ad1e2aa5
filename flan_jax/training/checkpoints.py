"""Orbax checkpoints of the train state: every N steps, at the end, resumable.

Orbax writes each step into a temporary directory and renames it only once complete,
so an interrupted save never leaves a checkpoint that looks finished; the latest
finished step is what a restarted run resumes from. The temporary directories of saves
cut short are removed when the next run starts.

A checkpoint holds the state's `checkpointed()` part: with LoRA the adapters, their
optimizer state and the step, never the frozen base (the run records which base it
used, `models.lora_base`); a restored state comes back without it, for the trainer to
attach.

A save that cannot be written (a full disk, a quota) costs only itself: before saving,
the free space is compared with the state's size, and a save that fails while being
written is reported as soon as it fails (`raise_if_failed`, called every step), in
one line naming the step, the cause and the intact checkpoint to resume from, in
place of the tracebacks orbax and tensorstore print for each write (`orbax_messages`).
"""

import logging
import re
import shutil

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from flan_jax import orbax_messages, paths
from flan_jax.errors import UserError
from flan_jax.training import spikes
from flan_jax.training.train_step import TrainState

# Room a save needs beyond the state's bytes (metadata, and estimates that fall short).
_SPACE_MARGIN = 1.05
_SPACE_SLACK_BYTES = 16 << 20


def _cause(error: BaseException) -> str:
  """The operating system's reason ("No space left on device") if the error carries one."""
  text = str(error)
  reason = re.search(r"Failed to write [^:]*: ([^\[\]\n]+)", text) or re.search(
      r"\[Errno \d+\] ([^:\n]+)", text)
  return reason.group(1).strip() if reason else f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _saved(state: TrainState):
  """What a checkpoint of `state` holds (a plain tree is saved as it is)."""
  return state.checkpointed() if isinstance(state, TrainState) else state


class Checkpointer:
  """Saves and restores TrainStates under `directory` (MODEL_DIR/checkpoints)."""

  def __init__(self, directory: str, keep: int | None = 3):
    self._directory = paths.absolute(directory)  # gs://... stays as it is
    # One item per step, said up front: left to guess, orbax guesses from the first step
    # it reads, and an empty step directory would make it read every step as several
    # items. Temporary directories of saves cut short are removed as it starts.
    self._manager = ocp.CheckpointManager(
        self._directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))
    self._keep = keep
    self._in_flight: int | None = None  # the step being written in the background
    orbax_messages.quiet()

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

  def steps_kept_after_saving(self, step: int) -> list[int]:
    """The steps that remain once `step` is saved and the oldest beyond `keep` deleted."""
    steps = sorted(set(self.all_steps()) | {step})
    return steps[-self._keep:] if self._keep else steps

  def restore(self, step: int, abstract_state: TrainState) -> TrainState:
    """Restore `step` into the shapes, dtypes and shardings of `abstract_state`; its
    `frozen` part (LoRA's base) is not in a checkpoint and comes back None.

    A checkpoint saved before the state carried its spike window gets a fresh one.
    """
    saved = abstract_state.checkpointed()
    if "spikes" in self._manager.item_metadata(step).tree:
      return TrainState(**self._manager.restore(step, args=ocp.args.StandardRestore(saved)))
    older = {"step": saved["step"], "params": saved["params"], "opt_state": saved["opt_state"]}
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
      self._manager.save(step, args=ocp.args.StandardSave(_saved(state)), force=True)
    except Exception as e:
      raise self._failure(step, e) from None
    self._in_flight = step

  def _check_space(self, step: int, state: TrainState) -> None:
    if paths.is_remote(self._directory):
      return  # buckets have no free-space figure; a failed write is still reported
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(_saved(state))) * _SPACE_MARGIN
    needed += _SPACE_SLACK_BYTES
    free = shutil.disk_usage(self._directory).free
    if free < needed:
      raise UserError(
          f"not enough disk space to save checkpoint {step}: it needs about "
          f"{needed / 2**30:.2f} GiB in {self._directory} but {free / 2**30:.2f} GiB are free. "
          f"{self.resume_hint()}")

  def resume_hint(self) -> str:
    """What to do after a failed save: the intact checkpoint a rerun resumes from."""
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
                     f"{self.resume_hint()}")

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

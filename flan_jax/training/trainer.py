"""The training loop: init or resume, step, log, checkpoint.

It knows nothing of tasks: it is handed a function that starts the batch stream at a
given step. Resuming restores the latest checkpoint under MODEL_DIR/checkpoints and
asks for the stream from that step, so a run cut at any checkpoint and restarted ends
with the same parameters as one that ran straight through.

A LoRA run (the model config's `lora`) trains adapters on a frozen base: its
checkpoints hold the adapters and their optimizer state, and MODEL_DIR records which
base they belong to (`models.lora_base`); a resumed run places the base again from
`initial_params` (or the seed) and refuses one that is not the recorded base.

Faults cost at most the work since the last save:
- SIGTERM or SIGINT: the step in flight finishes, a checkpoint of it is saved, and the
  run stops with `Interrupted` (the entry point exits with 128 + the signal).
- A loss or gradient norm that is not finite stops the run with an error naming the
  step, before anything from that step on is saved, so every checkpoint kept is finite.
- A spike (a loss, gradient norm or weights' norm far above its recent median, see
  `spikes`) stops the run the same way, with checkpoints holding weights that spiked
  moved aside, so the rerun resumes from before the spike; or, with
  `spike_action="skip"`, the step is skipped and counted.
- A save that cannot be written (a full disk) stops the run with one error naming the
  step and the checkpoint it can resume from (see `checkpoints`).

Every logged step records the loss's metrics (see `losses`), the step's own, the
learning rate, tokens per second, MFU (where the devices' peak is known, see `mfu`)
and goodput (see `goodput`), to metrics.jsonl, TensorBoard and the progress bar.
"""

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import tqdm

from flan_jax import paths
from flan_jax.errors import Interrupted, UserError, check_whole_number
from flan_jax.model_dir import CHECKPOINTS_DIR, DATA_STATE_DIR
from flan_jax.models.families import ModelFamily
from flan_jax.models import lora
from flan_jax.models import lora_base
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import mfu as mfu_lib
from flan_jax.training import optimizer as optimizer_lib
from flan_jax.training import spikes
from flan_jax.training import train_step as step_lib
from flan_jax.training.checkpoints import Checkpointer
from flan_jax.training.goodput import GoodputClock
from flan_jax.training.prefetch import Placed, Prefetcher
from flan_jax.training import metrics_writer
from flan_jax.training.metrics_writer import MetricsWriter
from flan_jax.training.stop_signals import StopSignals

# (start step, saved stream state or None) -> batches from that step. A stream with a
# `state()` method has it saved with every checkpoint, as MODEL_DIR/data_state/<step>/
# host_<i>.json, and gets it back on resume; one without is replayed from the start.
BatchStream = Callable[..., Iterator[dict[str, np.ndarray]]]
# params -> scalars to log under "eval/" (every process calls it: it may be collective)
EvalFn = Callable[[Any], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  train_steps: int
  checkpoint_every: int = 500
  keep_checkpoints: int | None = 3
  log_every: int = 10
  z_loss: float = 1e-4
  seed: int = 0
  # The mesh's (data, fsdp, tensor) split of each slice or host's devices, and of the
  # slices or hosts (None: `mesh_shape` splits all devices); see `mesh`.
  mesh_shape: tuple[int, ...] = (-1, 1, 1)
  dcn_mesh_shape: tuple[int, ...] | None = None
  progress_bar: bool = True
  # Evaluate every this many steps during training (0: never); the caller evaluates
  # before and after.
  eval_every: int = 0
  # Accumulate each step's gradient over this many slices of the batch (less memory).
  microbatches: int = 1
  label_smoothing: float = 0.0
  # Batches made and copied to the devices ahead of training, on a background thread
  # (0: made when needed, on the training thread).
  prefetch: int = 2
  # Targets longer than this have their loss computed this many positions at a time,
  # never holding the whole batch's float32 logits (0: all at once).
  loss_chunk_length: int = 512
  # A step whose loss or gradient norm (after spike_warmup steps) or weights' norm is
  # more than spike_factor times its median over the last 100 steps is a spike (None:
  # never); spike_action "stop" stops the run, "skip" skips the step (see `spikes`).
  spike_factor: float | None = 10.0
  spike_warmup: int = 10
  spike_action: str = "stop"
  # Peak FLOP/s of one device, for MFU (None: from `mfu`'s table by device kind; a
  # device not in it gets no MFU).
  peak_flops_per_device: float | None = None

  @property
  def spike_rule(self) -> spikes.SpikeRule:
    return spikes.SpikeRule(self.spike_factor, self.spike_warmup, self.spike_action)

  def __post_init__(self):
    # Counts; 0 means none where allowed (no batches made ahead, no loss chunks, no
    # evaluation during training).
    for name, at_least in (("train_steps", 1), ("checkpoint_every", 1), ("log_every", 1),
                           ("microbatches", 1), ("prefetch", 0), ("loss_chunk_length", 0),
                           ("eval_every", 0)):
      check_whole_number(name, getattr(self, name), at_least)
    smoothing = self.label_smoothing
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not (
        0.0 <= smoothing < 1.0):
      raise UserError(f"label_smoothing must be in [0, 1), got {smoothing!r}.")
    self.spike_rule  # checks the spike settings
    peak = self.peak_flops_per_device
    if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float))
                             or not peak > 0):
      raise UserError(f"peak_flops_per_device must be a positive number of FLOP/s, or None "
                      f"to look it up by device kind; got {peak!r}.")

  def loss(self) -> losses.LossFn:
    """The default loss, cross-entropy, with this config's settings."""
    return losses.cross_entropy_loss(self.z_loss, self.label_smoothing, self.loss_chunk_length)


def _non_padding_tokens(batch: dict[str, np.ndarray]) -> int:
  """Tokens the model read: the decoder's, plus the encoder's for an encoder-decoder.

  Packed rows mark padding with segment id 0, unpacked rows with token id 0.
  """
  counted = [batch.get("decoder_segment_ids", batch["decoder_target_tokens"])]
  if "encoder_input_tokens" in batch:
    counted.append(batch.get("encoder_segment_ids", batch["encoder_input_tokens"]))
  return sum(int(np.count_nonzero(ids)) for ids in counted)


class _StepCheck:
  """Reads a step's verdict on the host (one step late, or at once before a save) and
  stops the run at a non-finite step, a spike, or too many skipped steps in a row."""

  def __init__(self, rule: spikes.SpikeRule, checkpointer: Checkpointer, model_dir: str):
    self._rule, self._checkpointer, self._model_dir = rule, checkpointer, model_dir
    self._checked = 0  # the last step checked

  def __call__(self, step: int, metrics) -> None:
    if step <= self._checked:
      return
    self._checked = step
    verdict = metrics["check"]
    finite, spike = (bool(v) for v in jax.device_get((verdict["finite"], verdict["spike"])))
    if finite and not spike:
      return
    host = jax.device_get(metrics)
    check = host.pop("check")
    host = {**host, **check}
    what = spikes.describe(host, self._rule)
    if self._rule.action == "skip":  # the step was skipped on the device
      logging.warning("Step %d was skipped: %s.", step, what)
      in_a_row = int(host["skips_in_a_row"])
      if in_a_row >= spikes.MAX_SKIPS_IN_A_ROW:
        first = step - in_a_row + 1
        self._stop_for_spike(step, first - 1, f"steps {first} to {step} were all skipped as "
                             f"spikes; at step {step}, {what}")
    elif not finite:
      self._checkpointer.wait()
      latest = self._checkpointer.latest_step()
      checkpoints = paths.join(self._model_dir, CHECKPOINTS_DIR)
      where = (f"the last checkpoint, step {latest} in {checkpoints}, is finite"
               if latest is not None else "no checkpoint was saved")
      raise UserError(
          f"training diverged at step {step}: loss {float(host['loss'])}, gradient norm "
          f"{float(host['grad_norm'])}. Nothing from that step on was saved; {where}. Lower "
          "the learning rate or check the data (then rerun: it resumes from the last "
          "checkpoint).")
    else:
      self._stop_for_spike(step, spikes.first_suspect_step(host, step), what)

  def _stop_for_spike(self, step: int, first_suspect: int, what: str) -> None:
    """Moves aside the checkpoints from `first_suspect` on, so a rerun resumes from
    before the spike, and stops the run saying so."""
    self._checkpointer.wait()
    aside = [self._checkpointer.set_aside(saved, "spiked")
             for saved in self._checkpointer.all_steps() if saved >= first_suspect]
    moved = (f"; checkpoints taken since the spike began were moved to {', '.join(aside)}"
             if aside else "")
    latest = self._checkpointer.latest_step()
    where = (f"the last checkpoint from before it is step {latest} in "
             f"{paths.join(self._model_dir, CHECKPOINTS_DIR)}" if latest is not None else
             "no checkpoint from before it was saved (a rerun starts from the beginning)")
    raise UserError(
        f"training spiked at step {step}: {what}. Nothing from that step on was saved{moved}; "
        f"{where}. Lower the learning rate or check the data, then rerun: it resumes from "
        "there. (spike_action='skip' skips such steps instead; a larger spike_factor, or "
        "None, flags fewer or none.)")


def _logged(host_metrics: Mapping[str, Any]) -> dict[str, Any]:
  """A step's metrics as logged: the loss's ("loss" first), then the step's own; not
  its verdict on itself."""
  step_metrics = {name: host_metrics[name] for name in step_lib.STEP_METRICS}
  loss_metrics = {name: value for name, value in host_metrics.items()
                  if name not in step_metrics and name != "check"}
  return {"loss": loss_metrics.pop("loss"), **loss_metrics, **step_metrics}


def _progress(scalars: Mapping[str, float]) -> dict[str, str]:
  """The progress bar's summary of a logged step."""
  shown = {"loss": f"{scalars['loss']:.3f}", "tok_s": f"{scalars['tokens_per_second']:,.0f}"}
  if "mfu" in scalars:
    shown["mfu"] = f"{scalars['mfu']:.1%}"
  shown["goodput"] = f"{scalars['goodput']:.0%}"
  return shown


def _data_state_path(model_dir: str, step: int) -> str:
  return paths.join(model_dir, DATA_STATE_DIR, str(step), f"host_{jax.process_index()}.json")


def _save_data_state(model_dir: str, step: int, stream, checkpointer: Checkpointer) -> None:
  """The stream's position after `step`, beside that step's checkpoint (written whole
  or not at all); positions of checkpoints that are gone, or that this save deletes,
  are removed. (Should the save fail, a checkpoint left without its position is
  resumed by replaying the stream.)"""
  state = stream.state() if hasattr(stream, "state") else None
  if state is None:
    return
  path = _data_state_path(model_dir, step)
  try:
    paths.write_atomically(path, json.dumps(state))
  except OSError as e:  # a full disk, most often: fails the save of this step
    raise UserError(f"saving the data position of step {step} to {path} failed: "
                    f"{e.strerror or e}. {checkpointer.resume_hint()}") from None
  kept = set(checkpointer.steps_kept_after_saving(step))
  root = paths.join(model_dir, DATA_STATE_DIR)
  for name in paths.listdir(root):
    if name.isdigit() and int(name) not in kept:
      paths.rmtree(paths.join(root, name))


def _load_data_state(model_dir: str, step: int) -> dict | None:
  path = _data_state_path(model_dir, step)
  if not paths.exists(path):
    logging.info("No data position saved for step %d: replaying the stream up to it.", step)
    return None
  try:
    return paths.read_json(path)
  except ValueError as e:
    logging.warning("%s is damaged (%s): replaying the stream up to step %d.", path, e, step)
  return None


def _restore_newest_intact(checkpointer: Checkpointer, abstract_state, model_dir: str):
  """The newest checkpoint that restores; a damaged one is reported in a line and skipped."""
  checkpoints = paths.join(model_dir, CHECKPOINTS_DIR)
  failures = []
  for step in reversed(checkpointer.all_steps()):
    try:
      return checkpointer.restore(step, abstract_state)
    except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      aside = checkpointer.set_aside(step)
      logging.warning("Checkpoint %d in %s does not restore (%s); moved it to %s "
                      "and trying an older one.", step, checkpoints, reason, aside)
      failures.append(f"step {step} ({reason})")
  raise UserError(f"No checkpoint in {checkpoints} restores: {'; '.join(failures)}. "
                  "Move that directory aside to train from the start.")


def train(model: ModelFamily, optimizer_config: optimizer_lib.OptimizerConfig,
          config: TrainerConfig, batches: BatchStream, model_dir: str,
          task_feature_lengths: Mapping[str, int], initial_params=None,
          evaluate: EvalFn | None = None,
          loss_fn: losses.LossFn | None = None,
          base_source: str | None = None) -> step_lib.TrainState:
  """Trains `model` to `config.train_steps`, resuming from MODEL_DIR if it holds a checkpoint.

  The steps minimise `loss_fn` (None: cross-entropy with `config`'s z-loss, label
  smoothing and chunking), and every metric it returns is logged.

  A fresh run starts from `initial_params` (pretrained weights) when given, else from
  a random initialisation; a resumed run ignores them, unless it trains LoRA adapters:
  then they are the frozen base (with `base_source`, where they came from, recorded in
  MODEL_DIR), placed again on every start and checked against the record. Every `config.eval_every` steps
  before the last, `evaluate(params)`'s scalars go to metrics.jsonl and TensorBoard as
  "eval/<name>".

  The first logged step also records `time_to_first_step_s`: from this call to the end
  of the run's first step (setup, restoring, compiling and the step itself).
  """
  began = time.perf_counter()
  clock = GoodputClock()
  mesh = mesh_lib.make_mesh(config.mesh_shape, dcn_shape=config.dcn_mesh_shape)
  optimizer = optimizer_lib.make_optimizer(optimizer_config, config.train_steps)
  schedule = optimizer_lib.learning_rate_schedule(optimizer_config, config.train_steps)
  checkpointer = Checkpointer(paths.join(model_dir, CHECKPOINTS_DIR), config.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is None:
    state, shardings = step_lib.init_train_state(model, optimizer, mesh, task_feature_lengths,
                                                 config.seed, params=initial_params)
    if state.frozen is not None:
      lora_base.check_or_write(model_dir, False, base_source, state.frozen)
  else:
    shardings = step_lib.state_shardings(model, optimizer, mesh, task_feature_lengths)
    frozen = None
    if model.config.lora is not None:  # the base first: a wrong one is refused before restoring
      frozen = lora.partition(step_lib.place_params(model, mesh, task_feature_lengths,
                                                    initial_params, config.seed),
                              model.config)[1]
      lora_base.check_or_write(model_dir, True, base_source, frozen)
    state = _restore_newest_intact(
        checkpointer, step_lib.abstract_train_state(model, optimizer, shardings,
                                                    task_feature_lengths), model_dir)
    state = state.replace(frozen=frozen)
  start = int(state.step)
  if start >= config.train_steps:
    checkpointer.close()
    return state

  train_step = step_lib.make_train_step(model, optimizer, mesh, shardings,
                                        loss_fn or config.loss(), microbatches=config.microbatches,
                                        seed=config.seed, spike_rule=config.spike_rule)
  flops_per_row = model.flops_per_sequence(model.sequence_lengths(task_feature_lengths))
  peak_flops = mfu_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                             config.peak_flops_per_device)
  data_state = _load_data_state(model_dir, start) if start else None
  stream = batches(start, data_state) if data_state is not None else batches(start)
  place = lambda local_batch: step_lib.global_batch(local_batch, mesh)
  stream = Prefetcher(stream, place, config.prefetch) if config.prefetch else Placed(stream, place)
  is_primary = jax.process_index() == 0
  if is_primary and start:
    dropped = metrics_writer.rewind(model_dir, start)
    if dropped:
      logging.info("Dropped %d metrics lines logged after step %d by the run that stopped.",
                   dropped, start)
  writer = MetricsWriter(model_dir, enabled=is_primary)
  bar = tqdm.tqdm(total=config.train_steps, initial=start, unit="step", dynamic_ncols=True,
                  disable=not (config.progress_bar and is_primary))
  if start and is_primary:
    bar.write(f"Resumed from checkpoint at step {start} in "
              f"{paths.join(model_dir, CHECKPOINTS_DIR)}.")
  tokens, rows, timer = 0, 0, time.perf_counter()
  saved, unchecked, first_step_s = start, None, None
  check = _StepCheck(config.spike_rule, checkpointer, model_dir)
  try:
    with StopSignals() as stop:
      for step in range(start, config.train_steps):
        with clock.counting("data_wait"):
          local_batch, placed_batch = next(stream)
        if step == start:
          clock.switch("compile")
        state, metrics = train_step(state, placed_batch)
        done = step + 1
        if step == start:
          jax.block_until_ready(metrics["loss"])
          first_step_s = time.perf_counter() - began
          logging.info("Time to first step: %.1f s.", first_step_s)
          clock.switch("step")
        checkpointer.raise_if_failed()  # a save that failed in the background stops the run
        # The previous step is checked now, one step late, so that reading its verdict
        # does not leave the device idle.
        if unchecked:
          check(*unchecked)
        unchecked = (done, metrics)
        # Counted per host and assumed alike across hosts. The first window's rate
        # includes compilation.
        tokens += _non_padding_tokens(local_batch) * jax.process_count()
        rows += len(local_batch["decoder_target_tokens"]) * jax.process_count()
        logging_step = done % config.log_every == 0 or done == config.train_steps
        if logging_step:
          logged = _logged(jax.device_get(metrics))  # waits for the step
          elapsed = max(time.perf_counter() - timer, 1e-9)
          scalars = {**logged, "learning_rate": float(schedule(step)),
                     "tokens_per_second": tokens / elapsed}
          if peak_flops is not None:
            scalars["mfu"] = mfu_lib.mfu(flops_per_row * rows, elapsed, peak_flops,
                                         jax.device_count())
          scalars.update(clock.metrics())
          if first_step_s is not None:
            scalars["time_to_first_step_s"], first_step_s = first_step_s, None
          writer.write(done, scalars)
          bar.set_postfix(_progress(scalars))
          tokens, rows, timer = 0, 0, time.perf_counter()
        if done % config.checkpoint_every == 0 or done == config.train_steps:
          with clock.counting("checkpoint"):
            check(done, metrics)  # nothing non-finite or spiking is ever saved
            _save_data_state(model_dir, done, stream, checkpointer)
            checkpointer.save(done, state)
          saved = done
        if (evaluate and config.eval_every and done % config.eval_every == 0
            and done < config.train_steps):
          with clock.counting("eval"):
            scalars = evaluate(state.model_params)
          writer.write(done, {f"eval/{name}": value for name, value in scalars.items()})
          if is_primary:
            bar.write(f"step {done}: " + ", ".join(f"{name} {value:.1f}"
                                                   for name, value in sorted(scalars.items())))
          tokens, rows, timer = 0, 0, time.perf_counter()  # the next rates leave evaluation out
        bar.update(1)
        if done < config.train_steps and stop.requested(sync=logging_step):
          with clock.counting("checkpoint"):
            check(done, metrics)
            if saved != done:
              _save_data_state(model_dir, done, stream, checkpointer)
              checkpointer.save(done, state)
          raise Interrupted(
              f"Stopped by {stop.name} at step {done}: checkpoint {done} is saved in "
              f"{paths.join(model_dir, CHECKPOINTS_DIR)}. Run the same command again to resume "
              "from it.",
              stop.received)
  finally:
    stream.close()
    bar.close()
    writer.close()
    checkpointer.close()  # waits for the saves in flight
  return state

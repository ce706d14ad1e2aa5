"""Preference optimization after instruction tuning: DPO and its family on preference pairs.

The job behind `python -m flan_jax.train` when gin sets `train.preference`: read the
pairs (`preference_pairs`), render and tokenize them with the run's chat template as
conversations are (`preference_rows`), measure the held-out pairs' TRL metrics
(rewards/accuracies, ...) before training, train the policy with the preference
loss (`preference_losses`, a `LossFn` for the ordinary trainer), and measure again:
MODEL_DIR/eval/preference.json holds {"before", "after"}, and metrics.jsonl and
TensorBoard the curve ("eval/rewards/accuracies", ... at step 0, every EVAL_PERIOD
steps, and the last).

The policy is the whole model (full finetuning), or with `lora` (`train.lora =
@LoraConfig()`) LoRA adapters on the frozen starting weights, trained as LoRA SFT runs
train them: the base outside the gradients and the optimizer (`TrainState.frozen`),
checkpoints holding the adapters, MODEL_DIR/lora_base.json recording the base and a
resumed run refusing another. The reference is the starting weights, in one of three
ways (`PreferenceConfig.reference`):

  frozen       a second, frozen copy of the starting weights scores each batch
               before the step (two models in memory, nothing precomputed);
  precomputed  one pass before training scores every pair, train and held out,
               and stores the sums with the run (MODEL_DIR/reference_log_probs.json),
               so training holds one model; a resumed run reads them back, so it
               continues exactly;
  base         LoRA policies only, and their default: the policy's own base with
               its adapters switched off scores each batch inside the step (the
               model without adapters, run on the base weights the policy holds),
               so there is no second copy and nothing precomputed. At step 0 the
               adapters' B is zero, so the policy is its base.

With a LoRA policy the frozen and precomputed references score with the model
without adapters too, in the policy's parameter dtype: all three give the same reference
log-probs. An int8 base (`LoraConfig.base_dtype='int8'`) exists only in the adapted
model, so its reference is 'base' (the int8 model with zeroed adapters); the other two
are refused.

SimPO and ORPO need no reference and get none.
"""

import dataclasses
from typing import Mapping

from absl import logging
import jax
import numpy as np

from flan_jax import finetune, job, model_dir as model_dir_lib, paths
from flan_jax.data import chat_examples, preference_pairs, preference_rows, vocabularies
from flan_jax.errors import UserError, check_whole_number
from flan_jax.models import convert, int8_base
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.lora import LoraConfig
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import optimizer as optimizer_lib
from flan_jax.training import preference_losses
from flan_jax.training import train_step as step_lib
from flan_jax.training import trainer as trainer_lib
from flan_jax.training.metrics_writer import MetricsWriter
from flan_jax.training.run_lock import RunLock

REFERENCE_MODES = ("frozen", "precomputed", "base")
REFERENCE_FILE = "reference_log_probs.json"
RESULTS_FILE = "preference.json"  # under MODEL_DIR/eval
EVAL_BATCH_ROWS = 8  # rows per batch when scoring or evaluating pairs


@dataclasses.dataclass(frozen=True)
class PreferenceData:
  """A file of preference pairs (see `preference_pairs` for the formats).

  `template`: the chat template's name or file, as `ChatTask.template` (None: the
  vocabulary's default). `validation_records`: the file's last that many records
  held out, for the before/after metrics.
  """
  path: str
  format: str | None = None
  template: str | None = None
  on_error: str = "raise"
  validation_records: int = 0


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """The preference objective: its data, loss, reference and row layout.

  `pairs_per_row`: the most pairs packed into one row (1: padded, a pair per row).
  """
  data: PreferenceData | None = None
  loss_type: str = "sigmoid"
  beta: float = 0.1
  label_smoothing: float = 0.0
  simpo_gamma: float = 0.5
  rpo_alpha: float = 0.0
  # None: for the losses that need one, "base" with a LoRA policy, else "frozen"
  reference: str | None = None
  pairs_per_row: int = 4

  def loss(self) -> preference_losses.PreferenceLoss:
    return preference_losses.PreferenceLoss(self.loss_type, self.beta, self.label_smoothing,
                                            self.simpo_gamma, self.rpo_alpha)

  def reference_mode(self, lora_policy: bool) -> str | None:
    """How the reference is computed ("frozen", "precomputed", "base"); None: no reference."""
    if not self.loss().needs_reference:
      return None
    return self.reference or ("base" if lora_policy else "frozen")

  def check(self, lora_policy: bool = False) -> None:
    """Every setting, before any work: one error naming what to change. `lora_policy`:
    whether the policy is LoRA adapters (the "base" reference needs them)."""
    loss = self.loss()  # checks the loss settings
    if self.data is None:
      raise UserError("PreferenceConfig.data is not set: give the pairs, e.g. "
                      "PreferenceConfig.data = @PreferenceData() and PreferenceData.path.")
    if loss.needs_reference:
      if self.reference is not None and self.reference not in REFERENCE_MODES:
        raise UserError(f"PreferenceConfig.reference={self.reference!r}; loss "
                        f"{self.loss_type!r} compares with a reference model: use one of "
                        f"{', '.join(REFERENCE_MODES)}.")
      if self.reference == "base" and not lora_policy:
        raise UserError("PreferenceConfig.reference='base' is the policy's base with its LoRA "
                        "adapters switched off, but the policy is the whole model (train.lora "
                        "is None): set train.lora = @LoraConfig(), or use reference 'frozen' "
                        "or 'precomputed'.")
    elif self.reference is not None:
      raise UserError(f"PreferenceConfig.reference={self.reference!r}, but "
                      f"{self.loss_type!r} is reference-free: it would compute a reference "
                      "it never reads. Leave PreferenceConfig.reference unset (None).")
    check_whole_number("PreferenceConfig.pairs_per_row", self.pairs_per_row, 1)


def _initial(checkpoint, model_config, vocabulary, seed, lengths):
  """(model config, host params) to start from: the checkpoint's (its architecture, gin's
  settings for how it runs, as finetuning takes them), or a random initialisation.
  Without adapters: a LoRA policy's are added on the devices (`train_step.place_params`)."""
  config, params = finetune.starting_model(dataclasses.replace(model_config, lora=None),
                                           checkpoint, vocabulary)
  if params is None:
    network = job.network_for(config, vocabulary)
    params = jax.device_get(jax.jit(lambda rng: step_lib.init_params(network, rng, lengths))(
        jax.random.key(seed)))
  return config, params


def run(*, model_dir: str, preference: PreferenceConfig, task_feature_lengths: Mapping[str, int],
        batch_size: int, trainer: trainer_lib.TrainerConfig,
        model=DecoderConfig(), optimizer=optimizer_lib.OptimizerConfig(),
        initial_checkpoint_path: str | None = None, vocabulary_path: str | None = None,
        evaluate_before: bool = True, config_gin: str | None = None,
        lora: LoraConfig | None = None) -> dict:
  """Evaluates the held-out pairs, trains, evaluates again; returns {"before", "after"}.

  `lora`: the policy is LoRA adapters on the frozen starting weights (None: the whole
  model)."""
  preference.check(lora_policy=lora is not None)
  mode = preference.reference_mode(lora_policy=lora is not None)
  if mode in ("frozen", "precomputed") and lora is not None and lora.base_dtype == int8_base.INT8:
    raise UserError(f"PreferenceConfig.reference={mode!r} scores the float starting weights, "
                    "but the policy runs on their int8 quantization (LoraConfig.base_dtype="
                    "'int8'), so the two would differ before training. Use reference 'base' "
                    "(the default with LoRA): the int8 base with the adapters switched off.")
  mesh = mesh_lib.make_mesh(trainer.mesh_shape, dcn_shape=trainer.dcn_mesh_shape)
  mesh_lib.check_batch_fits(mesh, batch_size)
  if batch_size % trainer.microbatches:
    raise UserError(f"BATCH_SIZE={batch_size} does not split into microbatches="
                    f"{trainer.microbatches} equal slices.")
  job.ensure_writable_dir(model_dir)
  length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
  with RunLock(model_dir, enabled=jax.process_index() == 0):
    checkpoint = model_dir_lib.resolve(initial_checkpoint_path) if initial_checkpoint_path else None
    vocabulary = vocabularies.library_vocabulary(vocabulary_path,
                                                 checkpoint and checkpoint.tokenizer_dir)
    vocabulary = vocabulary or vocabularies.byte_vocabulary()
    data = preference.data
    template = (chat_examples.load_template(data.template) if data.template
                else chat_examples.default_template(vocabulary))
    chat_examples.check_markers(template, vocabulary)
    base_config, initial_params = _initial(checkpoint, model, vocabulary, trainer.seed,
                                           task_feature_lengths)
    # The reference's model: the starting weights without adapters (with LoRA the base).
    base_network = job.network_for(base_config, vocabulary)
    config = dataclasses.replace(base_config, lora=lora) if lora is not None else base_config
    network = job.network_for(config, vocabulary)
    bos_id = network.bos_id
    splits = _tokenized_splits(data, template, vocabulary, bos_id, length)
    _record_run(model_dir, config, checkpoint, template, config_gin)

    loss_config = preference.loss()
    mode = preference.reference_mode(lora_policy=lora is not None)
    reference_map, score_batch = {}, None
    if mode in ("frozen", "precomputed"):
      score_tokens = jax.jit(lambda p, b: losses.token_log_probs(base_network, p, b))
      # The starting model as the policy starts: in its parameter dtype (a bfloat16
      # policy's reference is bfloat16 too, so step 0's rewards are 0).
      frozen = jax.device_put(convert.in_param_dtype(initial_params, base_config))
      score_batch = lambda batch: np.asarray(score_tokens(frozen, batch))
      if mode == "precomputed":
        reference_map = _precomputed(model_dir, splits, score_batch, length,
                                     preference.pairs_per_row, bos_id)
        del frozen  # training holds one model
        score_batch = None
    reference_family = None
    if mode == "base":
      # An int8 base exists only in the adapted model: it scores with zeroed adapters.
      reference_family = network if int8_base.enabled(config) else base_network
    loss_fn = preference_losses.preference_loss(
        loss_config, reference_family=reference_family,
        chunk_length=trainer.loss_chunk_length)

    evaluate = None
    if "validation" in splits:
      evaluate = _held_out_evaluation(network, loss_fn, splits["validation"], length,
                                      preference.pairs_per_row, bos_id, score_batch,
                                      reference_map.get("validation"))
    before = _recorded_before(model_dir)
    if before is None:  # a fresh run: measured now, logged at step 0
      before = {}
      if evaluate and evaluate_before:
        # With LoRA, the base and its fresh adapters (B = 0), placed as training places them.
        before = evaluate(step_lib.place_params(network, mesh, task_feature_lengths,
                                                initial_params, seed=trainer.seed)
                          if lora is not None else jax.device_put(initial_params))
      _log(model_dir, 0, before)
      if jax.process_index() == 0:
        paths.write_json(paths.join(model_dir, "eval", RESULTS_FILE), {"before": before},
                         indent=1)

    def batches(start_step: int, state=None):
      stream = preference_rows.train_batches(
          splits["train"], length, batch_size, pairs_per_row=preference.pairs_per_row,
          seed=trainer.seed, bos_id=bos_id, skip_batches=start_step,
          shard_index=jax.process_index(), num_shards=jax.process_count(),
          reference=reference_map.get("train"))
      for batch in stream:
        batch.pop("preference_pair_index")
        if score_batch is not None:
          batch[preference_losses.REFERENCE_FEATURE] = score_batch(batch)
        yield batch

    state = trainer_lib.train(network, optimizer, trainer, batches, model_dir,
                              task_feature_lengths, initial_params=initial_params,
                              evaluate=evaluate, loss_fn=loss_fn,
                              base_source=checkpoint.path if checkpoint else None)
    after = evaluate(state.model_params) if evaluate else {}
    results = {"before": before, "after": after}
    if jax.process_index() == 0:
      _log(model_dir, trainer.train_steps, after)
      paths.write_json(paths.join(model_dir, "eval", RESULTS_FILE), results, indent=1)
      for name in sorted(after):
        print(f"{name:24s} before {before.get(name, float('nan')):9.4f}   after "
              f"{after[name]:9.4f}")
    return results


def _recorded_before(model_dir: str) -> dict | None:
  """The held-out metrics before training, as a resumed run's first part recorded them
  (None for a fresh run: no checkpoint yet)."""
  if not paths.isdir(paths.join(model_dir, model_dir_lib.CHECKPOINTS_DIR)):
    return None
  return model_dir_lib.read_json_or(paths.join(model_dir, "eval", RESULTS_FILE), {}).get("before")


def _log(model_dir: str, step: int, scalars: Mapping[str, float]) -> None:
  """Held-out metrics into metrics.jsonl and TensorBoard as eval/<name>, as the trainer
  logs them at EVAL_PERIOD."""
  if not scalars or jax.process_index() != 0:
    return
  writer = MetricsWriter(model_dir)
  try:
    writer.write(step, {f"eval/{name}": value for name, value in scalars.items()})
  finally:
    writer.close()


def _tokenized_splits(data: PreferenceData, template, vocabulary, bos_id, length):
  read = preference_pairs.read_pairs(data.path, format=data.format, on_error=data.on_error)
  logging.info("%s: %s", data.path, read.summary())
  if read.problems:
    logging.warning("%s: %d bad records skipped; the first: %s", data.path,
                    read.counts["bad_record"], read.problems[0])
  splits = preference_pairs.split_pairs(read.pairs, data.validation_records, data.path)
  out = {}
  for split, pairs in splits.items():
    tokenized = [preference_rows.tokenize_pair(template, vocabulary, pair, bos_id=bos_id,
                                               index=i) for i, pair in enumerate(pairs)]
    out[split] = preference_rows.fitting(tokenized, length, f"{data.path} ({split})")
  return out


def _precomputed(model_dir, splits, score_batch, length, pairs_per_row, bos_id):
  """{split: {pair index: (chosen, rejected)}}: read from MODEL_DIR, else scored once and
  written there. Scored in the rows evaluation reads (the held-out pairs' before-metrics
  then compare the policy with itself in one layout: rewards exactly 0)."""
  path = paths.join(model_dir, REFERENCE_FILE)
  fingerprint = {split: [[p.index, len(p.prompt), len(p.chosen), len(p.rejected)]
                         for p in pairs] for split, pairs in splits.items()}
  if paths.exists(path):
    stored = paths.read_json(path)
    if stored.get("pairs") != fingerprint:
      raise UserError(f"{path} holds reference log-probs of other pairs than this run's; "
                      "use the same data and lengths, or a new MODEL_DIR.")
  else:
    stored = {"pairs": fingerprint, "sums": {}}
    side_sums = jax.jit(lambda log_probs, batch: (
        lambda sums: (sums.chosen, sums.rejected))(
            preference_losses.pair_sums(log_probs, batch)))
    for split, pairs in splits.items():
      sums = {}
      for batch in preference_rows.eval_batches(pairs, length, EVAL_BATCH_ROWS,
                                                pairs_per_row=pairs_per_row, bos_id=bos_id):
        index = batch.pop("preference_pair_index")
        chosen, rejected = jax.device_get(side_sums(score_batch(batch), batch))
        for row, slot in zip(*np.nonzero(batch["preference_pair_slots"])):
          sums[int(index[row, slot])] = [float(chosen[row, slot]), float(rejected[row, slot])]
      stored["sums"][split] = [sums[p.index] for p in pairs]
    if jax.process_index() == 0:
      paths.write_json(path, stored)
  return {split: {p.index: tuple(v) for p, v in zip(pairs, stored["sums"][split])}
          for split, pairs in splits.items()}


def _held_out_evaluation(network, loss_fn, pairs, length, pairs_per_row, bos_id,
                         score_batch, reference):
  """params -> the held-out pairs' loss and TRL metrics, each a mean over pairs."""
  batches = preference_rows.eval_batches(pairs, length, EVAL_BATCH_ROWS,
                                         pairs_per_row=pairs_per_row,
                                         bos_id=bos_id, reference=reference)
  for batch in batches:
    batch.pop("preference_pair_index")
    if score_batch is not None:
      batch[preference_losses.REFERENCE_FEATURE] = score_batch(batch)
  sums_of = jax.jit(lambda p, b: loss_fn(network, p, b, None)[1:])

  def evaluate(params) -> dict[str, float]:
    totals, pairs_seen = {}, 0.0
    for batch in batches:
      weight, sums = jax.device_get(sums_of(params, batch))
      pairs_seen += float(weight)
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + float(value)
    return {name: value / max(pairs_seen, 1.0) for name, value in totals.items()}

  return evaluate


def _record_run(model_dir, config, checkpoint, template, config_gin) -> None:
  """The model's config (for export), the chat template (for `infer --chat`), config.gin;
  written once the run agrees with the model MODEL_DIR holds checkpoints of."""
  finetune.check_same_model(model_dir, config)
  if jax.process_index() != 0:
    return
  if config_gin is not None:
    paths.write_atomically(paths.join(model_dir, model_dir_lib.CONFIG_GIN), config_gin)
  convert.save_run_config(model_dir, config, checkpoint)
  paths.write_atomically(paths.join(model_dir, model_dir_lib.TEMPLATE_FILE), template.to_json())

"""Preference losses (DPO, IPO, hinge, SimPO, ORPO, and RPO's SFT term) as `LossFn`s.

A preference batch holds pairs: for each, the prompt with its chosen answer and the
prompt with its rejected answer, as two segments of the same row (`preference_rows`),
so a pair never straddles devices or processes. Per token the batch says which pair
slot of its row it answers (`preference_pair_ids`, 1-based; 0 for prompts and
padding) and whether it is in the chosen side's segment (`preference_chosen`);
`preference_pair_slots` [B, K] marks the slots that hold a pair, so K (the most pairs
a row can hold) is static. Only answer tokens (`decoder_loss_weights` 1: the answer
and its end of turn) are summed, never the prompt or padding.

The reference-based losses (sigmoid, ipo, hinge) read the reference model's
log-probabilities from the batch (`reference_log_probs` [B, L]: per answer token, or
a side's whole sum on any one of its tokens; both sum alike), so the step holds one
model whichever way they were computed (`preference_finetune`). With a LoRA policy
the reference can instead be the policy's own base, its adapters switched off
(`reference_family`): the step then scores each batch with the base weights the
policy already holds, through the model without adapters, under no gradient and
no dropout; no second copy of the base exists.

Each loss and metric is the one TRL computes (DPOTrainer for sigmoid, ipo, hinge and
the RPO term; CPOTrainer's "simpo"; ORPOTrainer), under TRL's metric names:

  sigmoid  -(1-ε) log σ(βΔ) - ε log σ(-βΔ), Δ = (c - c_ref) - (r - r_ref), log-probs
           summed over the answer (ε > 0: conservative DPO, as TRL's sigmoid had it)
  hinge    relu(1 - βΔ)
  ipo      ((c - c_ref)/|c| - (r - r_ref)/|r| - 1/(2β))², per-token averages
  simpo    the sigmoid loss of β((c/|c| - r/|r|) - γ/β): no reference, length-normalised
  orpo     -β log σ(log-odds(c) - log-odds(r)) over per-token averages, plus the
           token-mean cross-entropy of the chosen sequences ("nll_loss"), prompt
           included, as TRL's ORPOTrainer and the ORPO authors' code compute it

`rpo_alpha` > 0 adds rpo_alpha times the chosen answers' token-mean cross-entropy
(TRL's `loss_type=["sigmoid", "sft"]`) to any loss. Such a token mean is over the
batch's chosen tokens; a step split into microbatches averages each microbatch's,
weighted by its pairs.

rewards/chosen and rewards/rejected are β(c - c_ref) and β(r - r_ref) (β times the
averaged log-probs for simpo and orpo, as TRL logs them); rewards/accuracies the
share of pairs whose chosen reward is the larger; logps/* the policy's log-probs
(sums; averages for simpo and orpo).
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from flan_jax.errors import UserError
from flan_jax.models import lora
from flan_jax.models.families import ModelFamily, target_log_probs
from flan_jax.training.losses import LossFn, chunked_target_log_probs

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE: tuple[str, ...] = ("simpo", "orpo")
# The features a preference batch adds to a decoder row's.
PAIR_FEATURES = ("preference_pair_ids", "preference_chosen", "preference_pair_slots")
REFERENCE_FEATURE = "reference_log_probs"

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
  """Which preference loss, and its settings (see the module docstring)."""
  loss_type: str = "sigmoid"
  beta: float = 0.1
  label_smoothing: float = 0.0  # sigmoid and simpo only
  simpo_gamma: float = 0.5
  rpo_alpha: float = 0.0  # weight of an SFT term on the chosen answers; 0: none

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise UserError(f"PreferenceLoss.loss_type={self.loss_type!r} is not a preference loss; "
                      f"use one of {', '.join(LOSS_TYPES)}.")
    for name in ("beta", "label_smoothing", "simpo_gamma", "rpo_alpha"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UserError(f"PreferenceLoss.{name} must be a number, got {value!r}.")
    if not self.beta > 0:
      raise UserError(f"PreferenceLoss.beta={self.beta!r}: beta must be > 0 (it scales the "
                      "reward; DPO's usual values are 0.01 to 0.5).")
    if not 0 <= self.label_smoothing < 0.5:
      raise UserError(f"PreferenceLoss.label_smoothing={self.label_smoothing!r}: it is the "
                      "chance a preference label is flipped, in [0, 0.5).")
    if self.label_smoothing and self.loss_type not in ("sigmoid", "simpo"):
      raise UserError(f"PreferenceLoss.label_smoothing applies to 'sigmoid' and 'simpo' only, "
                      f"not {self.loss_type!r}; set it to 0.")
    if self.rpo_alpha < 0:
      raise UserError(f"PreferenceLoss.rpo_alpha={self.rpo_alpha!r} must be >= 0.")

  @property
  def needs_reference(self) -> bool:
    return self.loss_type not in REFERENCE_FREE


def _per_pair(values_BxL, pair_ids_BxL, side_BxL, slots: int) -> jnp.ndarray:
  """[B, K]: per row and pair slot, the sum of `values` over that pair's `side` tokens."""
  rows = values_BxL.shape[0]
  index = jnp.arange(rows)[:, None] * slots + pair_ids_BxL - 1
  index = jnp.where((pair_ids_BxL > 0) & side_BxL, index, rows * slots)  # the rest: dropped
  sums = jax.ops.segment_sum(values_BxL.reshape(-1), index.reshape(-1),
                             num_segments=rows * slots + 1)
  return sums[:-1].reshape(rows, slots)


@dataclasses.dataclass
class PairSums:
  """Per pair slot [B, K]: log-prob sums and answer lengths of each side."""
  chosen: jnp.ndarray
  rejected: jnp.ndarray
  chosen_tokens: jnp.ndarray
  rejected_tokens: jnp.ndarray
  reference_chosen: jnp.ndarray | None
  reference_rejected: jnp.ndarray | None


def pair_sums(token_log_probs_BxL, batch: Batch, reference_BxL=None) -> PairSums:
  """Sums of the policy's (and the reference's) answer-token log-probs per pair and side."""
  weights = batch["decoder_loss_weights"] > 0
  pair_ids = batch["preference_pair_ids"]
  chosen = (batch["preference_chosen"] > 0) & weights
  rejected = ~(batch["preference_chosen"] > 0) & weights
  slots = batch["preference_pair_slots"].shape[1]
  side = lambda values, mask: _per_pair(values, pair_ids, mask, slots)
  ones = weights.astype(jnp.float32)
  reference = (None, None) if reference_BxL is None else (
      side(reference_BxL.astype(jnp.float32), chosen),
      side(reference_BxL.astype(jnp.float32), rejected))
  return PairSums(side(token_log_probs_BxL, chosen), side(token_log_probs_BxL, rejected),
                  side(ones, chosen), side(ones, rejected), *reference)


def _log1mexp(x):
  """log(1 - exp(x)) for x < 0, accurate near 0 and far below it."""
  return jnp.where(x > -0.693, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _smoothed_sigmoid_loss(z, smoothing: float):
  return -(1 - smoothing) * jax.nn.log_sigmoid(z) - smoothing * jax.nn.log_sigmoid(-z)


def pair_losses(config: PreferenceLoss, sums: PairSums) -> tuple[jnp.ndarray, dict]:
  """(per-pair loss [B, K], {metric: per-pair values}) of the pairs' log-prob sums."""
  beta = config.beta
  chosen_len = jnp.maximum(sums.chosen_tokens, 1.0)
  rejected_len = jnp.maximum(sums.rejected_tokens, 1.0)
  extra = {}
  if config.needs_reference:
    if sums.reference_chosen is None:
      raise UserError(f"PreferenceLoss {config.loss_type!r} compares with a reference model, "
                      f"but the batch has no {REFERENCE_FEATURE!r}.")
    chosen_ratio = sums.chosen - sums.reference_chosen
    rejected_ratio = sums.rejected - sums.reference_rejected
    delta = chosen_ratio - rejected_ratio
    if config.loss_type == "sigmoid":
      loss = _smoothed_sigmoid_loss(beta * delta, config.label_smoothing)
    elif config.loss_type == "hinge":
      loss = jax.nn.relu(1 - beta * delta)
    else:  # ipo, over per-token averages (as TRL's, by its authors' advice)
      loss = (chosen_ratio / chosen_len - rejected_ratio / rejected_len - 1 / (2 * beta)) ** 2
    rewards = beta * chosen_ratio, beta * rejected_ratio
    logps = sums.chosen, sums.rejected
  else:
    # An empty slot (no pair) reads -1 rather than 0, whose log-odds are infinite: the
    # slot is masked out of the loss, but a NaN there would poison the sum and gradient.
    chosen_mean = jnp.where(sums.chosen_tokens > 0, sums.chosen / chosen_len, -1.0)
    rejected_mean = jnp.where(sums.rejected_tokens > 0, sums.rejected / rejected_len, -1.0)
    if config.loss_type == "simpo":
      margin = (chosen_mean - rejected_mean) - config.simpo_gamma / beta
      loss = _smoothed_sigmoid_loss(beta * margin, config.label_smoothing)
    else:  # orpo: the odds ratio; its SFT term is added per batch
      log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean)
                                                  - _log1mexp(rejected_mean))
      ratio = jax.nn.log_sigmoid(log_odds)
      loss = -beta * ratio
      extra = {"log_odds_ratio": ratio, "log_odds_chosen": log_odds}
    rewards = beta * chosen_mean, beta * rejected_mean
    logps = chosen_mean, rejected_mean
  rewards = tuple(jax.lax.stop_gradient(r) for r in rewards)
  metrics = {"rewards/chosen": rewards[0], "rewards/rejected": rewards[1],
             "rewards/accuracies": (rewards[0] > rewards[1]).astype(jnp.float32),
             "rewards/margins": rewards[0] - rewards[1],
             "logps/chosen": logps[0], "logps/rejected": logps[1], **extra}
  return loss, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}


def model_log_probs(family: ModelFamily, params, batch: Batch, weights_BxL, rng=None,
                    chunk_length: int = 0) -> jnp.ndarray:
  """[B, L]: each target token's log-prob times `weights_BxL`; rows longer than
  `chunk_length` (0: never) projected onto the vocabulary that many positions at a time
  (`losses.chunked_target_log_probs`), never holding the batch's whole float32 logits."""
  targets = batch["decoder_target_tokens"]
  if chunk_length and targets.shape[1] > chunk_length:
    return chunked_target_log_probs(family, params,
                                    family.hidden_states(params, batch, dropout_rng=rng),
                                    targets, weights_BxL, chunk_length)
  return target_log_probs(family.logits(params, batch, dropout_rng=rng), targets, weights_BxL)


def base_log_probs(reference_family: ModelFamily, policy: ModelFamily, params,
                   batch: Batch, chunk_length: int = 0) -> jnp.ndarray:
  """[B, L]: the answer tokens' log-probs under the LoRA policy's base, its adapters
  switched off: `reference_family` (the policy's model without adapters) run on the
  base leaves of the policy's `params`, a constant of the step. A `reference_family`
  with LoRA (the policy's own model, for an int8 base) runs with its adapters zeroed."""
  adapters, base = lora.partition(params, policy.config)
  if base is None:
    raise UserError("The reference 'base' is the LoRA policy with its adapters switched "
                    "off, but the policy has no adapters (no LoRA config).")
  if getattr(reference_family.config, "lora", None) is not None:
    # A reference model with LoRA (an int8 base, which only the adapted model holds):
    # adapters with B = 0 add exactly 0, so zeroed they are switched off.
    base = lora.combine(jax.tree.map(jnp.zeros_like, adapters), base)
  log_probs = model_log_probs(reference_family, base, batch, batch["decoder_loss_weights"],
                              chunk_length=chunk_length)
  return jax.lax.stop_gradient(log_probs)


def preference_loss(config: PreferenceLoss, reference_family: ModelFamily | None = None,
                    chunk_length: int = 0) -> LossFn:
  """The `LossFn` of `config` over a preference batch: the sum of the pairs' losses, the
  number of pairs, and TRL's metrics summed over pairs (the step divides all by the
  number of pairs).

  `reference_family` (a LoRA policy's model without its adapters): where a batch
  brings no reference log-probs, they are the policy's base's (`base_log_probs`).
  `chunk_length`: rows longer than this get their log-probs this many positions at a
  time (`model_log_probs`; 0: all at once), as cross-entropy's `loss_chunk_length`."""

  def loss(family: ModelFamily, params, batch: Batch, rng: jax.Array):
    in_sequence = (batch["decoder_segment_ids"] > 0).astype(jnp.float32)
    all_log_probs = model_log_probs(family, params, batch, in_sequence, rng, chunk_length)
    token_log_probs = all_log_probs * batch["decoder_loss_weights"]
    reference = batch.get(REFERENCE_FEATURE)
    if reference is None and reference_family is not None and config.needs_reference:
      reference = base_log_probs(reference_family, family, params, batch, chunk_length)
    sums = pair_sums(token_log_probs, batch, reference)
    per_pair, metrics = pair_losses(config, sums)
    valid = batch["preference_pair_slots"].astype(jnp.float32)
    pairs = valid.sum()
    loss_sum = (per_pair * valid).sum()
    totals = {name: (value * valid).sum() for name, value in metrics.items()}
    sft_weight = 1.0 if config.loss_type == "orpo" else config.rpo_alpha
    if sft_weight:
      # A token-mean cross-entropy, once per batch (counted per pair, since the step
      # divides by the pairs): over the chosen answers (RPO), or ORPO's whole chosen
      # sequences.
      if config.loss_type == "orpo":
        chosen = in_sequence * (batch["preference_chosen"] > 0)
        nll = -(all_log_probs * chosen).sum() / jnp.maximum(chosen.sum(), 1.0)
      else:
        nll = -(sums.chosen * valid).sum() / jnp.maximum((sums.chosen_tokens * valid).sum(),
                                                          1.0)
      loss_sum = loss_sum + sft_weight * nll * pairs
      totals["nll_loss"] = jax.lax.stop_gradient(nll) * pairs
    return loss_sum, pairs, {"loss": loss_sum, **totals}

  return loss

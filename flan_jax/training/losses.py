"""Losses: what a train step minimises, handed to it as an argument.

A `LossFn` maps (family, params, batch, rng) to (loss sum, weight, metrics): the loss
summed over the batch's examples or tokens, what it is summed over (target tokens for
cross-entropy, pairs for a preference loss), and metrics summed the same way. The
train step divides the loss and every metric by the whole batch's weight, so a batch
split into microbatches gives the loss of the whole batch, and the trainer logs every
metric the loss returns. Its "loss" metric is the one the spike detector watches and
the progress bar shows.

Cross-entropy (with z-loss, label smoothing and chunking) is the default loss; a
preference loss (DPO and the like) is another `LossFn`, over the targets'
log-probabilities that `target_log_probs` gives, as scoring computes them.
"""

from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp

from flan_jax.models.families import ModelFamily, target_log_probs

Batch = Mapping[str, Any]
Metrics = dict[str, jnp.ndarray]


class LossFn(Protocol):

  def __call__(self, family: ModelFamily, params, batch: Batch,
               rng: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray, Metrics]:
    """(loss sum, weight, metric sums) of `batch`; `rng` drives dropout.

    The weight must depend on the batch alone, not on `params`: a microbatched step
    reads the whole batch's weight before it differentiates any part.
    """


def token_losses(logits_BxLxV, targets_BxL, z_loss: float, label_smoothing: float = 0.0):
  """Per-token cross-entropy and z-loss, both [B, L] float32.

  The z-loss (PaLM's z_loss * logsumexp**2) keeps the softmax normaliser near 1 and the
  logits from drifting in bf16. With label smoothing ε the target is (1 - ε) on the
  label plus ε spread evenly over the vocabulary, whose cross-entropy is
  logsumexp - mean(logits).
  """
  log_z = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  ce = log_z - target_logit
  if label_smoothing:
    ce = (1.0 - label_smoothing) * ce + label_smoothing * (log_z - logits_BxLxV.mean(axis=-1))
  return ce, z_loss * jnp.square(log_z)


def chunked_loss_sums(model: ModelFamily, params, hidden_BxLxE, targets_BxL, weights_BxL,
                      z_loss: float, label_smoothing: float, chunk_length: int):
  """(sum of weighted cross-entropy, sum of weighted z-loss), projecting `chunk_length`
  positions at a time: only one chunk's float32 logits [B, chunk, V] exist at once, in
  the forward pass and (recomputed) in the backward pass, never the whole [B, L, V].
  """
  @jax.checkpoint  # keep only the chunk's inputs for the backward pass, not its logits
  def chunk_sums(sums, chunk):
    hidden, targets, weights = chunk
    ce, z = token_losses(model.project(params, hidden), targets, z_loss, label_smoothing)
    return (sums[0] + (ce * weights).sum(), sums[1] + (z * weights).sum()), None

  sums, _ = jax.lax.scan(chunk_sums, (jnp.zeros(()), jnp.zeros(())),
                         _in_chunks(hidden_BxLxE, targets_BxL, weights_BxL, chunk_length))
  return sums


def _in_chunks(hidden_BxLxE, targets_BxL, weights_BxL, chunk_length: int):
  """The three padded to whole chunks (padded positions weigh 0) and split to
  [chunks, B, chunk_length, ...], the sequence a scan over chunks reads."""
  batch, length = targets_BxL.shape
  chunks = -(-length // chunk_length)
  pad = chunks * chunk_length - length
  if pad:
    hidden_BxLxE = jnp.pad(hidden_BxLxE, ((0, 0), (0, pad), (0, 0)))
    targets_BxL, weights_BxL = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets_BxL, weights_BxL))
  split = lambda x: jnp.moveaxis(x.reshape(batch, chunks, chunk_length, *x.shape[2:]), 1, 0)
  return split(hidden_BxLxE), split(targets_BxL), split(weights_BxL)


def chunked_target_log_probs(model: ModelFamily, params, hidden_BxLxE, targets_BxL, weights_BxL,
                             chunk_length: int) -> jnp.ndarray:
  """`target_log_probs` of the logits `model.project` makes of `hidden_BxLxE` ([B, L]),
  projecting `chunk_length` positions at a time as `chunked_loss_sums` does: one chunk's
  float32 logits exist at once, forward and (recomputed) backward. For the losses over
  log-probabilities (the preference losses)."""
  @jax.checkpoint  # keep only the chunk's inputs for the backward pass, not its logits
  def chunk_log_probs(_, chunk):
    hidden, targets, weights = chunk
    return None, target_log_probs(model.project(params, hidden), targets, weights)

  _, log_probs_CxBxK = jax.lax.scan(chunk_log_probs, None, _in_chunks(
      hidden_BxLxE, targets_BxL, weights_BxL, chunk_length))
  batch, length = targets_BxL.shape  # the padded positions are cut off
  return jnp.moveaxis(log_probs_CxBxK, 0, 1).reshape(batch, -1)[:, :length]


def cross_entropy_loss(z_loss: float = 1e-4, label_smoothing: float = 0.0,
                       chunk_length: int = 0) -> LossFn:
  """Token cross-entropy on target tokens only (seqio's `decoder_loss_weights`), plus
  the z-loss; metrics "loss" (the cross-entropy alone) and "z_loss".

  Targets longer than `chunk_length` (0: never) have their loss computed that many
  positions at a time (`chunked_loss_sums`), so large vocabularies never hold the whole
  batch's float32 logits.
  """

  def loss(family: ModelFamily, params, batch: Batch, rng: jax.Array):
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    if chunk_length and targets.shape[1] > chunk_length:
      ce_sum, z_sum = chunked_loss_sums(
          family, params, family.hidden_states(params, batch, dropout_rng=rng), targets,
          weights, z_loss, label_smoothing, chunk_length)
    else:
      ce, z = token_losses(family.logits(params, batch, dropout_rng=rng), targets, z_loss,
                           label_smoothing)
      ce_sum, z_sum = (ce * weights).sum(), (z * weights).sum()
    return ce_sum + z_sum, weights.sum(), {"loss": ce_sum, "z_loss": z_sum}

  return loss


def token_log_probs(family: ModelFamily, params, batch: Batch, rng=None) -> jnp.ndarray:
  """[B, L]: the log-probability the model gives each target token of `batch` (0 where
  `decoder_loss_weights` is 0); with `rng`, as in training (dropout applied)."""
  return target_log_probs(family.logits(params, batch, dropout_rng=rng),
                          batch["decoder_target_tokens"], batch["decoder_loss_weights"])


def per_token_loss(model: ModelFamily, params, batch: Batch) -> jnp.ndarray:
  """Cross-entropy of every target position ([B, L]); callers apply the loss weights."""
  return token_losses(model.logits(params, batch), batch["decoder_target_tokens"], 0.0)[0]

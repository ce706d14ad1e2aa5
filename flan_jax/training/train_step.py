"""Train state, its sharded initialisation, the loss, and the jit-compiled train step.

The loss is token cross-entropy on target tokens only (seqio's `decoder_loss_weights`),
averaged over the batch's target tokens, plus PaLM's z-loss (z_loss * logsumexp**2),
which keeps the softmax normaliser near 1 and the logits from drifting in bf16.

Each step also judges itself for spikes against the window of recent steps the state
carries (`spikes`): its metrics say whether it spiked, and under the "skip" action a
spiking or non-finite step leaves the weights and optimizer state as they were.
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from flan_jax.models.families import ModelFamily
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import spikes as spikes_lib

Batch = Mapping[str, Any]
Lengths = Mapping[str, int]


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  spikes: spikes_lib.SpikeWindow


def token_losses(logits_BxLxV, targets_BxL, z_loss: float, label_smoothing: float = 0.0):
  """Per-token cross-entropy and z-loss, both [B, L] float32.

  With label smoothing ε the target is (1 - ε) on the label plus ε spread evenly over
  the vocabulary, whose cross-entropy is logsumexp - mean(logits).
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
  batch, length = targets_BxL.shape
  chunks = -(-length // chunk_length)
  pad = chunks * chunk_length - length  # padded positions weigh 0
  if pad:
    hidden_BxLxE = jnp.pad(hidden_BxLxE, ((0, 0), (0, pad), (0, 0)))
    targets_BxL, weights_BxL = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets_BxL, weights_BxL))
  split = lambda x: jnp.moveaxis(x.reshape(batch, chunks, chunk_length, *x.shape[2:]), 1, 0)

  @jax.checkpoint  # keep only the chunk's inputs for the backward pass, not its logits
  def chunk_sums(sums, chunk):
    hidden, targets, weights = chunk
    ce, z = token_losses(model.project(params, hidden), targets, z_loss, label_smoothing)
    return (sums[0] + (ce * weights).sum(), sums[1] + (z * weights).sum()), None

  sums, _ = jax.lax.scan(chunk_sums, (jnp.zeros(()), jnp.zeros(())),
                         (split(hidden_BxLxE), split(targets_BxL), split(weights_BxL)))
  return sums


def per_token_loss(model: ModelFamily, params, batch: Batch) -> jnp.ndarray:
  """Cross-entropy of every target position ([B, L]); callers apply the loss weights."""
  return token_losses(model.logits(params, batch), batch["decoder_target_tokens"], 0.0)[0]


def init_params(model: ModelFamily, rng, lengths: Lengths):
  """Random parameters (unboxed), for the given task feature lengths."""
  return nn.meta.unbox(model.init(rng, lengths)["params"])


def _state_initializer(model: ModelFamily, optimizer: optax.GradientTransformation,
                       lengths: Lengths):
  def init(rng) -> TrainState:
    return _fresh_state(init_params(model, rng, lengths), optimizer)
  return init


def _fresh_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    spikes=spikes_lib.start(params))


def param_shardings(model: ModelFamily, mesh: Mesh, lengths: Lengths):
  """NamedShardings for every parameter, from its logical axes (training's layout)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), lengths)["params"])
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                     mesh_lib.LOGICAL_AXIS_RULES)


def place_params(model: ModelFamily, mesh: Mesh, lengths: Lengths, params=None, seed: int = 0):
  """Parameters on the mesh in training's layout: `params` (host arrays) moved once, or a
  random initialisation created sharded, never whole on one device first."""
  shardings = param_shardings(model, mesh, lengths)
  if params is not None:
    return jax.device_put(params, shardings)
  with mesh_lib.on_mesh(mesh):
    return jax.jit(lambda rng: init_params(model, rng, lengths),
                   out_shardings=shardings)(jax.random.key(seed))


def state_shardings(model: ModelFamily, optimizer: optax.GradientTransformation, mesh: Mesh,
                    lengths: Lengths) -> TrainState:
  """NamedShardings for every leaf of the train state, from the parameters' logical axes."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), lengths)["params"])
  params = param_shardings(model, mesh, lengths)
  abstract_params = nn.meta.unbox(boxed)
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)

  def like_parameter(moment, sharding, parameter):
    # Moments shaped like their parameter are sharded like it. Adafactor's factored
    # ones (a row and a column vector per matrix) are small: replicated.
    return sharding if moment.shape == parameter.shape else mesh_lib.replicated(mesh)

  # Counts and other scalars are replicated, as is the small spike window.
  opt_shardings = optax.tree_map_params(
      optimizer, like_parameter, abstract_opt_state, params, abstract_params,
      transform_non_params=lambda _: mesh_lib.replicated(mesh))
  spikes = jax.tree.map(lambda _: mesh_lib.replicated(mesh),
                        jax.eval_shape(spikes_lib.start, abstract_params))
  return TrainState(step=mesh_lib.replicated(mesh), params=params, opt_state=opt_shardings,
                    spikes=spikes)


def init_train_state(model: ModelFamily, optimizer: optax.GradientTransformation, mesh: Mesh,
                     lengths: Lengths, seed: int, params=None) -> tuple[TrainState, TrainState]:
  """A step-0 state in its sharded layout (random, or from `params`), and its shardings."""
  shardings = state_shardings(model, optimizer, mesh, lengths)
  with mesh_lib.on_mesh(mesh):
    if params is None:
      init = _state_initializer(model, optimizer, lengths)
      state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    else:
      params = jax.device_put(params, shardings.params)
      state = jax.jit(lambda p: _fresh_state(p, optimizer), out_shardings=shardings)(params)
  return state, shardings


def abstract_train_state(model: ModelFamily, optimizer: optax.GradientTransformation,
                         shardings: TrainState, lengths: Lengths) -> TrainState:
  """Shapes, dtypes and shardings of the state, to restore a checkpoint into."""
  shapes = jax.eval_shape(_state_initializer(model, optimizer, lengths), jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def _microbatches(batch: Batch, count: int) -> Batch:
  """[B, ...] -> [count, B / count, ...]: microbatch m holds rows m, m + count, ..., so
  each device keeps rows of every microbatch."""
  def split(x):
    rows = x.shape[0]
    return jnp.swapaxes(x.reshape(rows // count, count, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model: ModelFamily, optimizer: optax.GradientTransformation, mesh: Mesh,
                    shardings: TrainState, z_loss: float = 1e-4, microbatches: int = 1,
                    label_smoothing: float = 0.0, seed: int = 0,
                    loss_chunk_length: int = 0,
                    spike_rule: spikes_lib.SpikeRule = spikes_lib.SpikeRule()) -> Callable:
  """jit(state, batch) -> (state, metrics); the old state's buffers are donated.

  With `microbatches` > 1 the batch's gradient is accumulated over that many slices,
  each one's loss divided by the whole batch's target tokens, so the step equals the
  one-slice step (up to float summation order) in a fraction of the activation memory.

  Dropout (a model's `dropout_rate`) draws its masks from `seed`, the step number and
  the microbatch, so a resumed run drops exactly what a straight run drops, on any mesh.

  Targets longer than `loss_chunk_length` (0: never) have their loss computed that many
  positions at a time (`chunked_loss_sums`), so large vocabularies never hold the whole
  batch's float32 logits.

  Its metrics say whether the step spiked under `spike_rule` (see `spikes`); with the
  "skip" action a step that spiked or is not finite is not applied.
  """

  def step(state: TrainState, batch: Batch):
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    num_targets = jnp.maximum(weights.sum(), 1.0)

    step_rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params, part, index=0):
      rng = jax.random.fold_in(step_rng, index)
      targets = part["decoder_target_tokens"]
      part_weights = part["decoder_loss_weights"].astype(jnp.float32)
      if loss_chunk_length and targets.shape[1] > loss_chunk_length:
        ce_sum, z_sum = chunked_loss_sums(
            model, params, model.hidden_states(params, part, dropout_rng=rng), targets,
            part_weights, z_loss, label_smoothing, loss_chunk_length)
      else:
        ce, z = token_losses(model.logits(params, part, dropout_rng=rng), targets, z_loss,
                             label_smoothing)
        ce_sum, z_sum = (ce * part_weights).sum(), (z * part_weights).sum()
      return (ce_sum + z_sum) / num_targets, (ce_sum, z_sum)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
      (_, (ce_sum, z_sum)), grads = grad_fn(state.params, batch)
    else:
      def accumulate(carry, indexed_part):
        grads, ce_sum, z_sum = carry
        index, part = indexed_part
        (_, (ce, z)), part_grads = grad_fn(state.params, part, index)
        return (jax.tree.map(jnp.add, grads, part_grads), ce_sum + ce, z_sum + z), None
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, ce_sum, z_sum), _ = jax.lax.scan(
          accumulate, (zeros, jnp.zeros(()), jnp.zeros(())),
          (jnp.arange(microbatches), _microbatches(batch, microbatches)))
    ce_mean, z_mean = ce_sum / num_targets, z_sum / num_targets
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    watched = {"loss": ce_mean, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params)}
    finite = jnp.isfinite(z_mean) & jnp.all(jnp.isfinite(jnp.stack(list(watched.values()))))
    spiked, medians = spikes_lib.judge(state.spikes, spike_rule, watched)
    spike = spiked["loss"] | spiked["grad_norm"] | spiked["param_norm"]
    normal = finite & ~spike
    skipped = jnp.zeros((), bool)
    if spike_rule.action == "skip":
      skipped = ~normal
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(skipped, old, new),
                                       (params, opt_state), (state.params, state.opt_state))
    window = spikes_lib.record(state.spikes, watched, normal, skipped)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, spikes=window)
    metrics = {**watched, **medians, "z_loss": z_mean, "target_tokens": weights.sum(),
               "finite": finite, "spikes": spiked, "spike": spike,
               "skipped_steps": window.skipped_steps, "skips_in_a_row": window.skips_in_a_row}
    return new_state, metrics

  jitted = jax.jit(step, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)

  def run(state, batch):
    with mesh_lib.on_mesh(mesh):
      return jitted(state, batch)

  run.jitted = jitted  # to lower and compile without running (benchmarks/memory_fit)
  return run


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows -> one jax.Array per feature spanning every host's rows."""
  sharding: NamedSharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}

"""Train state, its sharded initialisation, the loss, and the jit-compiled train step.

The loss is token cross-entropy on target tokens only (seqio's `decoder_loss_weights`),
averaged over the batch's target tokens, plus PaLM's z-loss (z_loss * logsumexp**2),
which keeps the softmax normaliser near 1 and the logits from drifting in bf16.
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from flan_jax.training import mesh as mesh_lib

Batch = Mapping[str, Any]


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any


def decoder_inputs(batch: Batch):
  """(tokens, positions, segment_ids, prefix) from seqio's prefix-LM features.

  Unpacked batches have no segment ids or positions: every row is one example.
  """
  tokens = batch["decoder_input_tokens"]
  segment_ids = batch.get("decoder_segment_ids")
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  positions = batch.get("decoder_positions")
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return tokens, positions, segment_ids, batch["decoder_causal_attention"]


def token_losses(logits_BxLxV, targets_BxL, z_loss: float):
  """Per-token cross-entropy and z-loss, both [B, L] float32."""
  log_z = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z - target_logit, z_loss * jnp.square(log_z)


def per_token_loss(model: nn.Module, params, batch: Batch) -> jnp.ndarray:
  """Cross-entropy of every position ([B, L]); callers apply the loss weights."""
  logits, _ = model.apply({"params": params}, *decoder_inputs(batch))
  return token_losses(logits, batch["decoder_target_tokens"], 0.0)[0]


def dummy_inputs(length: int):
  zeros = jnp.zeros((1, length), jnp.int32)
  return zeros, zeros, zeros, zeros


def _state_initializer(model: nn.Module, optimizer: optax.GradientTransformation, length: int):
  def init(rng) -> TrainState:
    params = nn.meta.unbox(model.init(rng, *dummy_inputs(length))["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  return init


def state_shardings(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    length: int) -> TrainState:
  """NamedShardings for every leaf of the train state, from the parameters' logical axes."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(length))["params"])
  param_shardings = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(boxed), mesh, mesh_lib.LOGICAL_AXIS_RULES)
  abstract_opt_state = jax.eval_shape(optimizer.init, nn.meta.unbox(boxed))
  # Optimizer moments are shaped like the parameters and sharded like them; counts
  # and other scalars are replicated.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
      transform_non_params=lambda _: mesh_lib.replicated(mesh))
  return TrainState(step=mesh_lib.replicated(mesh), params=param_shardings, opt_state=opt_shardings)


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                     length: int, seed: int, params=None) -> tuple[TrainState, TrainState]:
  """A step-0 state in its sharded layout (random, or from `params`), and its shardings."""
  shardings = state_shardings(model, optimizer, mesh, length)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
    if params is None:
      init = _state_initializer(model, optimizer, length)
      state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    else:
      params = jax.device_put(params, shardings.params)
      start = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
      state = jax.jit(start, out_shardings=shardings)(params)
  return state, shardings


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                         shardings: TrainState, length: int) -> TrainState:
  """Shapes, dtypes and shardings of the state, to restore a checkpoint into."""
  shapes = jax.eval_shape(_state_initializer(model, optimizer, length), jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    shardings: TrainState, z_loss: float = 1e-4) -> Callable:
  """jit(state, batch) -> (state, metrics); the old state's buffers are donated."""

  def step(state: TrainState, batch: Batch):
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    num_targets = jnp.maximum(weights.sum(), 1.0)

    def loss_fn(params):
      logits, _ = model.apply({"params": params}, *decoder_inputs(batch))
      ce, z = token_losses(logits, batch["decoder_target_tokens"], z_loss)
      ce_mean = (ce * weights).sum() / num_targets
      z_mean = (z * weights).sum() / num_targets
      return ce_mean + z_mean, (ce_mean, z_mean)

    (_, (ce_mean, z_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state)
    metrics = {"loss": ce_mean, "z_loss": z_mean, "grad_norm": optax.tree.norm(grads),
               "target_tokens": weights.sum()}
    return new_state, metrics

  jitted = jax.jit(step, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)

  def run(state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      return jitted(state, batch)

  return run


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows -> one jax.Array per feature spanning every host's rows."""
  sharding: NamedSharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}

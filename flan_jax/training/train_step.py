"""Train state, its sharded initialisation, and the jit-compiled train step.

The step minimises the `LossFn` it is given (`losses`; cross-entropy with z-loss by
default): the loss summed over the batch, divided by the batch's weight (its target
tokens, for cross-entropy).

With LoRA (a model config's `lora`), the parameters split in two (`lora.partition`):
the state's `params` are the adapters, the only leaves differentiated, updated and
given optimizer state; `frozen` holds the base, placed once, passed to every step and
never written to a checkpoint (`checkpoints` saves the rest). Without LoRA `frozen`
is None and `params` is the whole model, as before.

Each step also judges itself for spikes against the window of recent steps the state
carries (`spikes`): its metrics say whether it spiked, and under the "skip" action a
spiking or non-finite step leaves the weights and optimizer state as they were.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from flan_jax.models import int8_base, lora
from flan_jax.models.families import ModelFamily
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import spikes as spikes_lib

Batch = Mapping[str, Any]
Lengths = Mapping[str, int]
# What a step reports of itself, besides its loss's metrics and its verdict ("check").
STEP_METRICS = ("grad_norm", "param_norm", "skipped_steps")


class TrainState(flax.struct.PyTreeNode):
  step: jnp.ndarray
  params: Any  # what is trained: the whole model, or with LoRA its adapters
  opt_state: Any
  spikes: spikes_lib.SpikeWindow
  frozen: Any = None  # with LoRA, the base: not trained, not checkpointed

  @property
  def model_params(self):
    """The parameters the model runs with (adapters and base together, with LoRA)."""
    return lora.combine(self.params, self.frozen)

  def checkpointed(self) -> dict:
    """What a checkpoint holds: everything but the frozen base."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "spikes": self.spikes}


def init_params(model: ModelFamily, rng, lengths: Lengths):
  """Random parameters (unboxed), for the given task feature lengths. An int8 base
  (`int8_base`) is the float model's initialisation from `rng`, quantized."""
  if int8_base.enabled(model.config):
    params = init_params(_float_twin(model), rng, lengths)
    return int8_base.quantize(params, _abstract_params(model, lengths))
  return nn.meta.unbox(model.init(rng, lengths)["params"])


def _float_twin(model: ModelFamily) -> ModelFamily:
  """The model with its frozen base in param_dtype: what an int8 base is quantized from."""
  return dataclasses.replace(model, config=int8_base.float_config(model.config))


def _abstract_params(model: ModelFamily, lengths: Lengths):
  return jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), lengths)["params"]))


def _state_initializer(model: ModelFamily, optimizer: optax.GradientTransformation,
                       lengths: Lengths):
  def init(rng) -> TrainState:
    trainable, frozen = lora.partition(init_params(model, rng, lengths), model.config)
    return _fresh_state(trainable, optimizer).replace(frozen=frozen)
  return init


def _fresh_state(trainable, optimizer: optax.GradientTransformation) -> TrainState:
  """Step 0 of training `trainable`; the frozen part (LoRA's base) is attached apart."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable), spikes=spikes_lib.start(trainable))


def param_shardings(model: ModelFamily, mesh: Mesh, lengths: Lengths):
  """NamedShardings for every parameter, from its logical axes (training's layout)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), lengths)["params"])
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                     mesh_lib.LOGICAL_AXIS_RULES)


def place_params(model: ModelFamily, mesh: Mesh, lengths: Lengths, params=None, seed: int = 0):
  """Parameters on the mesh in training's layout: `params` (host arrays) moved once, or a
  random initialisation created sharded, never whole on one device first.

  With LoRA, `params` may be the base alone (a pretrained checkpoint): its adapters are
  then initialised from `seed` (B = 0: the model is the base), and the base is held in
  the config's param_dtype (bf16 halves a frozen base's memory).
  """
  if int8_base.enabled(model.config) and params is not None and not int8_base.is_quantized(params):
    return _place_quantized(model, mesh, lengths, params, seed)
  shardings = param_shardings(model, mesh, lengths)
  if params is None:
    with mesh_lib.on_mesh(mesh):
      return jax.jit(lambda rng: init_params(model, rng, lengths),
                     out_shardings=shardings)(jax.random.key(seed))
  if model.config.lora is None or lora.has_adapters(params):
    return jax.device_put(params, shardings)
  adapter_shardings, base_shardings = lora.partition(shardings, model.config)
  base = jax.device_put(params, base_shardings)
  dtype = jnp.dtype(model.config.param_dtype)
  # (An int8 base, already quantized, keeps its int8 values and float32 scales.)
  if not int8_base.enabled(model.config) and any(leaf.dtype != dtype
                                                 for leaf in jax.tree.leaves(base)):
    base = jax.jit(lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree),
                   out_shardings=base_shardings, donate_argnums=0)(base)
  with mesh_lib.on_mesh(mesh):  # only the adapters' initialisation survives compilation
    adapters = jax.jit(lambda rng: lora.partition(init_params(model, rng, lengths),
                                                  model.config)[0],
                       out_shardings=adapter_shardings)(jax.random.key(seed))
  return lora.combine(adapters, base)


def _place_quantized(model: ModelFamily, mesh: Mesh, lengths: Lengths, params, seed: int):
  """A float base (and adapters, if any) placed as the float model places it, then
  quantized on the devices into the int8 model's layout; the float copy is let go."""
  placed = place_params(_float_twin(model), mesh, lengths, params, seed)
  like = _abstract_params(model, lengths)
  with mesh_lib.on_mesh(mesh):
    return jax.jit(lambda tree: int8_base.quantize(tree, like),
                   out_shardings=param_shardings(model, mesh, lengths), donate_argnums=0)(placed)


def state_shardings(model: ModelFamily, optimizer: optax.GradientTransformation, mesh: Mesh,
                    lengths: Lengths) -> TrainState:
  """NamedShardings for every leaf of the train state, from the parameters' logical axes."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), lengths)["params"])
  params, frozen = lora.partition(param_shardings(model, mesh, lengths), model.config)
  abstract_params = lora.partition(nn.meta.unbox(boxed), model.config)[0]
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
                    spikes=spikes, frozen=frozen)


def init_train_state(model: ModelFamily, optimizer: optax.GradientTransformation, mesh: Mesh,
                     lengths: Lengths, seed: int, params=None) -> tuple[TrainState, TrainState]:
  """A step-0 state in its sharded layout (random, or from `params`: with LoRA the base,
  its adapters initialised from `seed`), and its shardings."""
  shardings = state_shardings(model, optimizer, mesh, lengths)
  if params is None:
    with mesh_lib.on_mesh(mesh):
      init = _state_initializer(model, optimizer, lengths)
      return jax.jit(init, out_shardings=shardings)(jax.random.key(seed)), shardings
  trainable, frozen = lora.partition(place_params(model, mesh, lengths, params, seed),
                                     model.config)
  with mesh_lib.on_mesh(mesh):  # the frozen base stays out: through jit it would be copied
    state = jax.jit(lambda p: _fresh_state(p, optimizer),
                    out_shardings=shardings.replace(frozen=None))(trainable)
  return state.replace(frozen=frozen), shardings


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
                    shardings: TrainState,
                    loss_fn: losses.LossFn = losses.cross_entropy_loss(), *,
                    microbatches: int = 1, seed: int = 0,
                    spike_rule: spikes_lib.SpikeRule = spikes_lib.SpikeRule()) -> Callable:
  """jit(state, batch) -> (state, metrics); the old state's buffers are donated.

  The step minimises `loss_fn`'s loss sum over the batch's weight (see `losses`). Its
  metrics are the loss's, each divided by that weight likewise, the step's own
  ("grad_norm", "param_norm", "skipped_steps"), and under "check" its verdict on
  itself (finite, spiked, the medians it was judged against).

  With `microbatches` > 1 the batch's gradient is accumulated over that many slices,
  each one's loss divided by the whole batch's weight, so the step equals the
  one-slice step (up to float summation order) in a fraction of the activation memory.

  Dropout (a model's `dropout_rate`) draws its masks from `seed`, the step number and
  the microbatch, so a resumed run drops exactly what a straight run drops, on any mesh.

  The step is judged for spikes under `spike_rule` (see `spikes`), on the loss's
  "loss" metric, the gradient norm and the weights' norm; with the "skip" action a
  step that spiked or is not finite is not applied.
  """

  def step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(jax.random.key(seed), state.step)

    # The frozen base (LoRA) enters the loss as a constant: only `trainable` is
    # differentiated, so no gradient of a base weight is ever computed.
    frozen = jax.lax.stop_gradient(state.frozen)

    def scaled_loss(trainable, part, total_weight, index=0):
      """The part's loss over the whole batch's weight (None: the part is the batch)."""
      params = lora.combine(trainable, frozen)
      loss_sum, weight, sums = loss_fn(model, params, part, jax.random.fold_in(step_rng, index))
      total_weight = weight if total_weight is None else total_weight
      return loss_sum / jnp.maximum(total_weight, 1.0), (weight, sums)

    grad_fn = jax.value_and_grad(scaled_loss, has_aux=True)
    if microbatches == 1:
      (_, (weight, sums)), grads = grad_fn(state.params, batch, None)
    else:
      # Every slice's loss is divided by the whole batch's weight, read first. The weight
      # depends on the batch alone, so the model's forward pass in this call is dead code
      # that the compiler drops.
      _, weight, _ = loss_fn(model, state.model_params, batch, step_rng)

      def accumulate(carry, indexed_part):
        grads, sums = carry
        index, part = indexed_part
        (_, (_, part_sums)), part_grads = grad_fn(state.params, part, weight, index)
        return jax.tree.map(jnp.add, (grads, sums), (part_grads, part_sums)), None

      parts = _microbatches(batch, microbatches)
      first = jax.tree.map(lambda x: x[0], parts)
      zero_sums = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
          lambda: loss_fn(model, state.model_params, first, step_rng)[2]))
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums),
                                      (jnp.arange(microbatches), parts))
    loss_metrics = {name: value / jnp.maximum(weight, 1.0) for name, value in sums.items()}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    watched = {"loss": loss_metrics["loss"], "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params)}
    values = [v.astype(jnp.float32) for v in [*loss_metrics.values(), *watched.values()]]
    finite = jnp.all(jnp.isfinite(jnp.stack(values)))
    spiked, medians = spikes_lib.judge(state.spikes, spike_rule, watched)
    spike = spiked["loss"] | spiked["grad_norm"] | spiked["param_norm"]
    normal = finite & ~spike
    skipped = jnp.zeros((), bool)
    if spike_rule.action == "skip":
      skipped = ~normal
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(skipped, old, new),
                                       (params, opt_state), (state.params, state.opt_state))
    window = spikes_lib.record(state.spikes, watched, normal, skipped)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, spikes=window,
                           frozen=state.frozen)
    check = {**medians, "finite": finite, "spikes": spiked, "spike": spike,
             "skips_in_a_row": window.skips_in_a_row}
    metrics = {**loss_metrics, **watched, "skipped_steps": window.skipped_steps, "check": check}
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

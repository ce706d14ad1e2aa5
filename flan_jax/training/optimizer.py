"""Optimizers and learning-rate schedules.

- AdamW (the default): the usual finetuning recipe; norms and embeddings not decayed.
- Adafactor with t5x's / FLAN's defaults: factored second moments, decay rate 0.8,
  update clipping at 1.0, updates scaled by each parameter's RMS, no momentum. It keeps
  about one number per row and column of a matrix instead of two per entry.

Schedules, each after a linear warmup from 0 to the peak:
- "cosine": down to `decay_to_fraction` of the peak at the last step;
- "constant": the peak throughout (t5x's finetuning default, 1e-3 with Adafactor);
- "rsqrt": peak * sqrt(warmup / step), T5's inverse square root decay.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from flan_jax.errors import UserError

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "constant", "rsqrt")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay_to_fraction: float = 0.1  # final learning rate as a fraction of the peak (cosine)
  weight_decay: float = 0.01  # AdamW only
  b1: float = 0.9
  b2: float = 0.95
  grad_clip_norm: float | None = 1.0
  name: str = "adamw"  # or "adafactor"
  schedule: str = "cosine"  # or "constant", "rsqrt"

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise UserError(f"OptimizerConfig.name={self.name!r} is not one of {list(OPTIMIZERS)}.")
    if self.schedule not in SCHEDULES:
      raise UserError(f"OptimizerConfig.schedule={self.schedule!r} is not one of "
                      f"{list(SCHEDULES)}.")
    if self.warmup_steps < 0 or self.learning_rate <= 0:
      raise UserError(f"OptimizerConfig needs learning_rate > 0 and warmup_steps >= 0 (got "
                      f"{self.learning_rate}, {self.warmup_steps}).")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  peak = config.learning_rate
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * config.decay_to_fraction)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum(step / warmup, 1.0) if warmup else 1.0
    if config.schedule == "constant":
      return peak * ramp
    return peak * ramp * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
  return schedule


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config, total_steps)
  # Norms and embeddings are not decayed: decaying RMSNorm scales toward 0 only hurts.
  decay_mask = lambda params: _map_with_path(
      lambda path: path[-1] not in ("scale", "embedding"), params)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.name == "adafactor":
    chain.append(optax.adafactor(
        schedule, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True,
        factored=True, min_dim_size_to_factor=128, momentum=None, eps=1e-30))
  else:
    chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2,
                             weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def _map_with_path(fn, tree):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: fn(tuple(getattr(k, "key", str(k)) for k in path)), tree)

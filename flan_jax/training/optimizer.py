"""AdamW with linear warmup and cosine decay: the usual finetuning recipe."""

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay_to_fraction: float = 0.1  # final learning rate as a fraction of the peak
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  grad_clip_norm: float | None = 1.0


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=config.learning_rate * config.decay_to_fraction)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config, total_steps)
  # Norms and embeddings are not decayed: decaying RMSNorm scales toward 0 only hurts.
  decay_mask = lambda params: _map_with_path(
      lambda path: path[-1] not in ("scale", "embedding"), params)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def _map_with_path(fn, tree):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: fn(tuple(getattr(k, "key", str(k)) for k in path)), tree)

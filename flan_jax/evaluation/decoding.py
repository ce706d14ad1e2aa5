"""Greedy decoding for the prefix-LM decoder with a KV cache.

Prompts arrive left-padded to one length, so every row's prompt ends at the same
buffer index and one prefill plus one token per step serves the whole batch. Each
row's positions count only its real tokens, and padding has segment 0, so a row
sees exactly what it would see alone. Decoding stops early once every row has
produced EOS; tokens after a row's EOS are 0.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models.decoder import Decoder, init_cache

GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_greedy_generate(model: Decoder, params, max_new_tokens: int, eos_id: int) -> GenerateFn:
  """(prompts [B, P], prompt_mask [B, P]) -> generated tokens [B, max_new_tokens]."""
  config = model.config

  @jax.jit
  def generate(params, prompts_BxP, mask_BxP):
    batch, prompt_length = prompts_BxP.shape
    cache = init_cache(config, batch, prompt_length + max_new_tokens)
    segment_ids = mask_BxP.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    logits, cache = model.apply({"params": params}, prompts_BxP, positions, segment_ids,
                                segment_ids, cache=cache)
    ones = jnp.ones((batch, 1), jnp.int32)

    def keep_going(carry):
      t, _, _, _, done, _ = carry
      return (t < max_new_tokens) & ~jnp.all(done)

    def step(carry):
      t, token, position, cache, done, out = carry
      out = out.at[:, t].set(jnp.where(done, 0, token))
      done = done | (token == eos_id)
      logits, cache = model.apply({"params": params}, token[:, None], position[:, None], ones,
                                  0 * ones, cache=cache)
      return t + 1, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), position + 1, cache, done, out

    carry = (jnp.zeros((), jnp.int32), jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32),
             positions[:, -1] + 1, cache, jnp.zeros((batch,), bool),
             jnp.zeros((batch, max_new_tokens), jnp.int32))
    return jax.lax.while_loop(keep_going, step, carry)[-1]

  return lambda prompts, mask: np.asarray(generate(params, prompts, mask))

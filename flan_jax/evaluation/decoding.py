"""Greedy decoding with a KV cache, for the prefix-LM decoder and for T5.

Prompts arrive left-padded to one length, so every row's prompt ends at the same
buffer index and one prefill plus one token per step serves the whole batch. Each
row's positions count only its real tokens, and padding has segment 0, so a row
sees exactly what it would see alone. Decoding stops early once every row has
produced EOS; tokens after a row's EOS are 0.

T5 encodes the prompt once and then decodes from the start token 0, attending to the
encoding (padding masked by segment 0) and to its own cached keys and values.

With `num_token_ids`, ids at or beyond the tokenizer's vocabulary size (embedding
rows a checkpoint pads its vocabulary with) are never generated.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models import t5 as t5_lib
from flan_jax.models.decoder import Decoder, init_cache
from flan_jax.models.families import ModelFamily, mask_unused_ids

GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

def _greedy_loop(first_logits, step_logits, cache, max_new_tokens: int, eos_id: int,
                 num_token_ids: int | None = None):
  """Greedy tokens [B, max_new_tokens] from the prefill's logits and a one-token step.

  `step_logits(token [B], index [B], cache) -> (logits [B, V], cache)`, where index
  counts the tokens generated before this one. Ids >= `num_token_ids` are never picked.
  """
  batch = first_logits.shape[0]

  def greedy(logits):
    return jnp.argmax(mask_unused_ids(logits, num_token_ids), axis=-1).astype(jnp.int32)

  def keep_going(carry):
    t, _, _, done, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def step(carry):
    t, token, cache, done, out = carry
    out = out.at[:, t].set(jnp.where(done, 0, token))
    done = done | (token == eos_id)
    logits, cache = step_logits(token, t, cache)
    return t + 1, greedy(logits), cache, done, out

  carry = (jnp.zeros((), jnp.int32), greedy(first_logits), cache,
           jnp.zeros((batch,), bool), jnp.zeros((batch, max_new_tokens), jnp.int32))
  return jax.lax.while_loop(keep_going, step, carry)[-1]


def make_greedy_generate(model: Decoder, params, max_new_tokens: int, eos_id: int,
                         num_token_ids: int | None = None) -> GenerateFn:
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
    next_position = positions[:, -1] + 1

    def step_logits(token, t, cache):
      logits, cache = model.apply({"params": params}, token[:, None], (next_position + t)[:, None],
                                  ones, 0 * ones, cache=cache)
      return logits[:, -1], cache

    return _greedy_loop(logits[:, -1], step_logits, cache, max_new_tokens, eos_id, num_token_ids)

  return lambda prompts, mask: np.asarray(generate(params, prompts, mask))


def make_encoder_decoder_generate(model: t5_lib.T5, params, max_new_tokens: int, eos_id: int,
                                  num_token_ids: int | None = None) -> GenerateFn:
  """(prompts [B, P], prompt_mask [B, P]) -> generated tokens [B, max_new_tokens], for T5."""
  config = model.config

  @jax.jit
  def generate(params, prompts_BxP, mask_BxP):
    batch = prompts_BxP.shape[0]
    segment_ids = mask_BxP.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    encoded = model.apply({"params": params}, prompts_BxP, segment_ids, positions,
                          method=t5_lib.T5.encode)
    ones = jnp.ones((batch, 1), jnp.int32)

    def step_logits(token, t, cache):
      logits, cache = model.apply(
          {"params": params}, encoded, segment_ids, token[:, None], ones,
          jnp.broadcast_to(t, (batch, 1)), cache=cache, method=t5_lib.T5.decode)
      return logits[:, -1], cache

    # The decoder starts from token 0; its logits give the first generated token.
    cache = t5_lib.init_cache(config, batch, max_new_tokens + 1)
    first, cache = step_logits(jnp.zeros((batch,), jnp.int32), jnp.zeros((), jnp.int32), cache)
    return _greedy_loop(first, lambda token, t, cache: step_logits(token, t + 1, cache), cache,
                        max_new_tokens, eos_id, num_token_ids)

  return lambda prompts, mask: np.asarray(generate(params, prompts, mask))


def make_generate(network: ModelFamily, params, max_new_tokens: int, eos_id: int) -> GenerateFn:
  """Greedy generation for either model family, never picking ids beyond its tokenizer's."""
  if network.encoder_decoder:
    return make_encoder_decoder_generate(network.module, params, max_new_tokens, eos_id,
                                         num_token_ids=network.num_token_ids)
  return make_greedy_generate(network.module, params, max_new_tokens, eos_id,
                              num_token_ids=network.num_token_ids)

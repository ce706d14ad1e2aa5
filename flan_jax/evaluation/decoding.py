"""Decoding strategies over the models' KV caches: greedy, sampling and beam search.

Prompts arrive left-padded to one length, so every row's prompt ends at the same
buffer index and one prefill plus one token per step serves the whole batch. Each
row's positions count only its real tokens, and padding has segment 0, so a row
sees exactly what it would see alone. Tokens after a row's EOS are 0, and decoding
stops once no row can change any more.

Each family (`families.ModelFamily`) gives a prefill (the prompt's last logits and a
cache) and a one-token step; T5 encodes the prompt once, decodes from the start token
0, and keeps its cross-attention keys and values in the cache after the first step.
The strategies are written once over that interface:

- greedy: the most likely token;
- sampling: temperature, then top-k, then top-p (nucleus) filtering, as Hugging
  Face applies them; reproducible from a seed;
- beam search: Hugging Face's algorithm (its `generate(num_beams=...)` with the
  default `early_stopping=False`), so the same model gives the same tokens. Each step
  keeps the 2 x num_beams best continuations; those ending in EOS (among the best
  num_beams) become finished hypotheses scored sum(log p) / length**length_penalty,
  the rest continue. A row stops once its running beams cannot beat its worst
  finished one.

With `num_token_ids`, ids at or beyond the tokenizer's vocabulary size (embedding
rows a checkpoint pads its vocabulary with) are never generated.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.errors import UserError
from flan_jax.evaluation.placement import RowPlacement
from flan_jax.models.families import MASKED_SCORE, ModelFamily, family_for, mask_unused_ids

GenerateFn = Callable[..., np.ndarray]
STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to pick tokens. top_k=0 and top_p=1.0 switch those filters off."""
  strategy: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise UserError(f"decoding strategy {self.strategy!r} is not one of {list(STRATEGIES)}.")
    if self.temperature <= 0:
      raise UserError(f"temperature must be > 0 (got {self.temperature}); use strategy "
                      "'greedy' for the most likely token.")
    if self.top_k < 0 or not 0 < self.top_p <= 1:
      raise UserError(f"top_k must be >= 0 and top_p in (0, 1] (got {self.top_k}, {self.top_p}).")
    if self.num_beams < 1:
      raise UserError(f"num_beams must be >= 1 (got {self.num_beams}).")


def _start(network: ModelFamily, params, prompts, mask, max_new_tokens: int):
  """(logits [B, V] after the prompt, cache, step(token [B], t, cache))."""
  first, cache, context = network.prefill(params, prompts, mask, max_new_tokens)
  return first, cache, lambda token, t, cache: network.step(params, context, token, t, cache)


# --- strategies ---------------------------------------------------------------

def filter_logits(logits_BxV, temperature: float, top_k: int, top_p: float):
  """Hugging Face's sampling warpers in its order: temperature, top-k, top-p.

  Top-p keeps the most likely tokens whose probabilities reach `top_p` together (at
  least one); the rest, like those below the k-th largest logit, get -inf.
  """
  logits = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    descending = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < top_p  # the first token always: its mass_before is 0
    threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _token_by_token(first_logits, cache, step, pick, max_new_tokens: int, eos_id: int):
  """One token per row per step ([B, max_new_tokens]); `pick(logits, t) -> token [B]`."""
  batch = first_logits.shape[0]

  def keep_going(carry):
    t, _, _, done, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, token, cache, done, out = carry
    out = out.at[:, t].set(jnp.where(done, 0, token))
    done = done | (token == eos_id)
    logits, cache = step(token, t, cache)
    return t + 1, pick(logits, t + 1), cache, done, out

  carry = (jnp.zeros((), jnp.int32), pick(first_logits, 0), cache,
           jnp.zeros((batch,), bool), jnp.zeros((batch, max_new_tokens), jnp.int32))
  return jax.lax.while_loop(keep_going, body, carry)[-1]


def _beam_search(first_logits, cache, step, reorder, batch: int, num_beams: int,
                 max_new_tokens: int, eos_id: int, length_penalty: float, num_token_ids):
  """Best hypothesis per prompt [batch, max_new_tokens] and its score [batch].

  The cache and logits hold batch x num_beams rows (each prompt repeated).
  """
  K, T = num_beams, max_new_tokens
  top_k_of_2k = jnp.arange(2 * K) < K
  gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)

  def log_probs(logits):
    # Normalised over every row, as Hugging Face does, then the unused ids are ruled out.
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return mask_unused_ids(log_p, num_token_ids).reshape(batch, K, -1)

  def body(c):
    t, logits, cache, running, running_scores, finished, finished_scores, finished_flag, open_, _ = c
    vocab = logits.shape[-1]
    scores = log_probs(logits) + running_scores[:, :, None]
    top_scores, top_index = jax.lax.top_k(scores.reshape(batch, K * vocab), 2 * K)
    beam, token = top_index // vocab, top_index % vocab
    candidates = gather(running, beam).at[:, :, t].set(token)  # [B, 2K, T]
    ends = (token == eos_id) | (t + 1 >= T)

    # The best K continuations that have not ended keep running.
    running_scores, keep = jax.lax.top_k(top_scores + ends * MASKED_SCORE, K)
    running, source_beam = gather(candidates, keep), gather(beam, keep)

    # Ended ones among the best K join the finished hypotheses, if the row is open.
    length = (t + 1).astype(jnp.float32)
    ended_scores = (top_scores / length ** length_penalty + (~open_)[:, None] * MASKED_SCORE
                    + (~(ends & top_k_of_2k))* MASKED_SCORE)
    finished_scores, keep = jax.lax.top_k(
        jnp.concatenate([finished_scores, ended_scores], 1), K)
    finished = gather(jnp.concatenate([finished, candidates], 1), keep)
    finished_flag = gather(jnp.concatenate([finished_flag, ends & top_k_of_2k], 1), keep)

    rows = (jnp.arange(batch)[:, None] * K + source_beam).reshape(-1)
    logits, cache = step(running[:, :, t].reshape(-1), t, reorder(cache, rows))
    # Can the best running beam still beat the worst finished one (at today's length)?
    best_possible = running_scores[:, :1] / length ** length_penalty
    worst = jnp.where(finished_flag, finished_scores.min(axis=1, keepdims=True), MASKED_SCORE)
    open_ = open_ & jnp.any(best_possible > worst, axis=1)
    return (t + 1, logits, cache, running, running_scores, finished, finished_scores,
            finished_flag, open_, ~jnp.all(ends))

  def keep_going(c):
    t, *_, open_, can_continue = c
    return (t < T) & jnp.any(open_) & can_continue

  running_scores = jnp.broadcast_to(jnp.where(jnp.arange(K) == 0, 0.0, MASKED_SCORE), (batch, K))
  empty = jnp.zeros((batch, K, T), jnp.int32)
  carry = (jnp.zeros((), jnp.int32), first_logits, cache, empty, running_scores, empty,
           jnp.full((batch, K), MASKED_SCORE), jnp.zeros((batch, K), bool),
           jnp.ones((batch,), bool),
           jnp.array(True))
  c = jax.lax.while_loop(keep_going, body, carry)
  return c[5][:, 0], c[6][:, 0]


def make_generate(network: ModelFamily, params, max_new_tokens: int, eos_id: int,
                  config: DecodeConfig = DecodeConfig(),
                  placement: RowPlacement = RowPlacement()) -> GenerateFn:
  """(prompts [B, P], prompt_mask [B, P], seed=None) -> generated tokens [B, max_new_tokens].

  `seed` (sampling only) defaults to `config.seed`; the same seed gives the same tokens.
  `placement` says where the rows run (B must be a multiple of its devices).
  """
  generate = _compiled_generate(network, max_new_tokens, eos_id, config)

  def run(prompts, mask, seed: int | None = None) -> np.ndarray:
    key = jax.random.key(config.seed if seed is None else seed)
    return placement.get(generate(params, placement.put(prompts), placement.put(mask), key))

  return run


@functools.lru_cache(maxsize=32)
def _compiled_generate(network: ModelFamily, max_new_tokens: int, eos_id: int,
                       config: DecodeConfig):
  """One compiled function per model and setting, whatever the parameters: evaluating
  every EVAL_PERIOD steps reuses it instead of compiling anew."""
  num_token_ids = network.num_token_ids

  @jax.jit
  def generate(params, prompts_BxP, mask_BxP, key):
    if config.strategy == "beam":
      batch, K = prompts_BxP.shape[0], config.num_beams
      first, cache, step = _start(network, params, jnp.repeat(prompts_BxP, K, axis=0),
                                  jnp.repeat(mask_BxP, K, axis=0), max_new_tokens)
      return _beam_search(first, cache, step, network.reorder_cache,
                          batch, K, max_new_tokens, eos_id, config.length_penalty,
                          num_token_ids)[0]
    first, cache, step = _start(network, params, prompts_BxP, mask_BxP, max_new_tokens)
    if config.strategy == "greedy":
      pick = lambda logits, t: jnp.argmax(mask_unused_ids(logits, num_token_ids),
                                          axis=-1).astype(jnp.int32)
    else:
      def pick(logits, t):
        logits = filter_logits(mask_unused_ids(logits, num_token_ids), config.temperature,
                               config.top_k, config.top_p)
        return jax.random.categorical(jax.random.fold_in(key, t), logits).astype(jnp.int32)
    return _token_by_token(first, cache, step, pick, max_new_tokens, eos_id)

  return generate


def make_greedy_generate(model, params, max_new_tokens: int, eos_id: int,
                         num_token_ids: int | None = None) -> GenerateFn:
  """Greedy decoding for a bare model module (`Decoder`: prompts already carry their BOS;
  `T5`)."""
  return make_generate(family_for(model.config, num_token_ids=num_token_ids), params,
                       max_new_tokens, eos_id)

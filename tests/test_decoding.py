"""Greedy decoding with a KV cache equals re-running the whole sequence each step."""

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.evaluation.decoding import make_greedy_generate
from flan_jax.evaluation.evaluator import left_pad_prompts
from flan_jax.models.decoder import Decoder
from tiny import dummy_inputs
from tiny import TINY_DECODER

EOS = 1


def _greedy_without_cache(model, params, prompt, steps, length=32):
  """The reference: the full sequence each step (right-padded to one shape, so one compile)."""
  forward = jax.jit(lambda *inputs: model.apply({"params": params}, *inputs)[0])
  tokens, prefix = [0, *prompt], [1] * (len(prompt) + 1)
  out = []
  for _ in range(steps):
    n = len(tokens)
    pad = [0] * (length - n)
    logits = forward(jnp.array([tokens + pad]), jnp.arange(length)[None],
                     jnp.array([[1] * n + pad]), jnp.array([prefix + pad]))
    token = int(jnp.argmax(logits[0, n - 1]))
    out.append(token)
    if token == EOS:
      break
    tokens.append(token)
    prefix.append(0)
  return out


def test_cached_greedy_matches_uncached_for_left_padded_prompts_of_different_lengths():
  model = Decoder(TINY_DECODER)
  params = model.init(jax.random.key(1), *dummy_inputs(8))["params"]
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, 259, size=n)) for n in (3, 11, 7)]
  steps = 10
  generate = make_greedy_generate(model, params, steps, EOS)
  padded, mask, truncated = left_pad_prompts(prompts, 16)
  assert truncated == 0
  generated = generate(padded, mask)
  for row, prompt in enumerate(prompts):
    expected = _greedy_without_cache(model, params, prompt, steps)
    assert generated[row, :len(expected)].tolist() == expected
    assert (generated[row, len(expected):] == 0).all()


def test_left_padding_truncates_from_the_start_and_counts_it():
  prompts, mask, truncated = left_pad_prompts([[5, 6, 7, 8], [9]], 3)
  assert truncated == 1
  assert prompts.tolist() == [[6, 7, 8], [0, 0, 9]]
  assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]

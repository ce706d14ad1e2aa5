"""Greedy decoding with a KV cache equals re-running the whole sequence each step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.evaluation.decoding import make_generate, make_greedy_generate
from flan_jax.evaluation.evaluator import left_pad_prompts
from flan_jax.models.decoder import Decoder
from flan_jax.models.families import family_for
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


def test_left_padding_cuts_the_front_of_the_inputs_but_keeps_the_bos_and_counts_it():
  prompts, mask, truncated = left_pad_prompts([[5, 6, 7, 8], [9]], 3, prefix=(2,))
  assert truncated == 1
  assert prompts.tolist() == [[2, 7, 8], [0, 2, 9]]  # the BOS (2) stays; 5 and 6 are cut
  assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_embedding_rows_beyond_the_tokenizer_are_never_generated():
  # A checkpoint with more rows than tokenizer ids (Qwen2: 151,936 rows, 151,665 ids).
  # Each extra row doubles a real one's lm_head column, so whichever real id would win
  # (a positive logit), its double wins by more: unmasked, only extra ids come out.
  ids = TINY_DECODER.vocab_size
  config = dataclasses.replace(TINY_DECODER, vocab_size=2 * ids, tie_embeddings=False,
                               prefix_lm=False)
  params = Decoder(config).init(jax.random.key(1), *dummy_inputs(8))["params"]
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  kernel = np.asarray(params["lm_head"]["kernel"]).copy()
  kernel[:, ids:2 * ids] = 2 * kernel[:, :ids]
  params = {**params, "lm_head": {"kernel": kernel}}
  prompts, mask, _ = left_pad_prompts([[5, 6, 7], [9, 10, 11, 12, 13]], 8)

  unmasked = make_generate(family_for(config), params, 6, eos_id=-1)(prompts, mask)
  assert (unmasked >= ids).all()  # the bias works: every step picks an extra row
  network = family_for(config, num_token_ids=ids)
  masked = make_generate(network, params, 6, eos_id=-1)(prompts, mask)
  assert (masked < ids).all()
  # Masked, it decodes exactly as the same model cut to the tokenizer's ids.
  same_size = family_for(dataclasses.replace(config, vocab_size=ids))
  rows = same_size.config.padded_vocab_size  # beyond `ids`, padding its logits never show
  cut = {**params, "embedding": params["embedding"][:rows], "lm_head": {"kernel": kernel[:, :rows]}}
  np.testing.assert_array_equal(masked, make_generate(same_size, cut, 6, eos_id=-1)(prompts, mask))


def test_masking_unused_ids_keeps_shape_and_is_the_identity_without_extra_rows():
  logits = jnp.arange(12, dtype=jnp.float32).reshape(2, 6)
  masked = family_for(TINY_DECODER, num_token_ids=4).mask_unused_ids(logits)
  assert masked.shape == logits.shape and masked.dtype == logits.dtype
  np.testing.assert_array_equal(masked[:, :4], logits[:, :4])
  assert (masked[:, 4:] <= -1e9).all()
  assert np.isfinite(np.asarray(jax.nn.log_softmax(masked))[:, :4]).all()
  for num_token_ids in (None, 6, 7):
    np.testing.assert_array_equal(
        family_for(TINY_DECODER, num_token_ids=num_token_ids).mask_unused_ids(logits), logits)

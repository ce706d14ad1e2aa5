"""The T5 encoder-decoder: cached decoding, packing, scanned layers, remat and bf16 agree.

Agreement with Hugging Face's implementation is tests/test_hf_t5.py; these tests
check that our own execution modes give the same numbers as the plain one.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import layer_stack
from flan_jax.models.t5 import T5, T5Config, init_cache

CONFIG = T5Config(vocab_size=50, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)


def init_params(config: T5Config, seed: int = 0):
  tokens = jnp.ones((1, 4), jnp.int32)
  init = jax.jit(lambda key: T5(config).init(key, tokens, tokens))
  return nn.meta.unbox(init(jax.random.key(seed))["params"])


@pytest.fixture(scope="module")
def params():
  return init_params(CONFIG)


def logits_fn(config: T5Config):
  return jax.jit(lambda p, *args: T5(config).apply({"params": p}, *args))


def random_tokens(shape, seed, low=1):
  return np.random.RandomState(seed).randint(low, CONFIG.vocab_size, size=shape).astype(np.int32)


def test_every_parameter_has_logical_axis_names():
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(lambda: T5(CONFIG).init(jax.random.key(0), tokens, tokens))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert boxed["encoder"]["relpos_bias"].names == ("relpos_buckets", "heads")
  assert "relpos_bias" not in boxed["encoder"]["layers_0"]["attention"]


def test_unsupported_feed_forward_lists_the_supported_ones():
  with pytest.raises(ValueError, match="gated-gelu.*gated-silu.*relu"):
    T5Config(feed_forward="gated-swish")


@pytest.mark.parametrize("scan", [False, True])
def test_cached_step_by_step_decoding_equals_teacher_forced_logits(params, scan):
  config = dataclasses.replace(CONFIG, scan_layers=scan)
  if scan:
    params = layer_stack.stack_layers(params)
  encoder_tokens = random_tokens((2, 7), seed=1)
  encoder_tokens[1, 4:] = 0  # the second row's inputs are padded
  decoder_tokens = random_tokens((2, 6), seed=2)
  decoder_tokens[:, 0] = 0  # decoder start token
  expected = logits_fn(config)(params, encoder_tokens, decoder_tokens)

  model = T5(config)
  encoder_segment_ids = (encoder_tokens != 0).astype(np.int32)
  encoded = jax.jit(lambda p, t: model.apply({"params": p}, t, method=T5.encode))(
      params, encoder_tokens)
  step = jax.jit(lambda p, token, cache: model.apply(
      {"params": p}, encoded, encoder_segment_ids, token, cache=cache, method=T5.decode))
  cache = init_cache(config, batch_size=2, length=8)  # longer than needed: spare slots stay hidden
  for i in range(decoder_tokens.shape[1]):
    logits, cache = step(params, decoder_tokens[:, i:i + 1], cache)
    np.testing.assert_allclose(logits[:, 0], expected[:, i], atol=1e-5, rtol=1e-5, err_msg=str(i))
  assert int(cache["index"]) == decoder_tokens.shape[1]


def test_packed_examples_get_the_same_logits_as_alone(params):
  enc_a, dec_a = random_tokens((5,), seed=3), random_tokens((4,), seed=4, low=0)
  enc_b, dec_b = random_tokens((3,), seed=5), random_tokens((3,), seed=6, low=0)
  dec_a[0] = dec_b[0] = 0
  apply = logits_fn(CONFIG)
  alone_a = apply(params, enc_a[None], dec_a[None])[0]
  alone_b = apply(params, enc_b[None], dec_b[None])[0]

  # One row: a then b then padding, as seqio's EncDecFeatureConverter packs them.
  pad = lambda x, n: np.concatenate([x, np.zeros(n - len(x), np.int32)])
  encoder_tokens = pad(np.concatenate([enc_a, enc_b]), 10)[None]
  decoder_tokens = pad(np.concatenate([dec_a, dec_b]), 9)[None]
  encoder_segment_ids = pad(np.array([1] * 5 + [2] * 3, np.int32), 10)[None]
  decoder_segment_ids = pad(np.array([1] * 4 + [2] * 3, np.int32), 9)[None]
  encoder_positions = pad(np.array(list(range(5)) + list(range(3)), np.int32), 10)[None]
  decoder_positions = pad(np.array(list(range(4)) + list(range(3)), np.int32), 9)[None]
  packed = apply(params, encoder_tokens, decoder_tokens, encoder_segment_ids, decoder_segment_ids,
                 encoder_positions, decoder_positions)[0]
  np.testing.assert_allclose(packed[:4], alone_a, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[4:7], alone_b, atol=1e-5, rtol=1e-5)
  assert np.isfinite(packed).all()  # padding rows included


def test_scanned_layers_give_the_same_logits_as_the_loop(params):
  scanned_config = dataclasses.replace(CONFIG, scan_layers=True)
  stacked = layer_stack.stack_layers(params)
  # The stacked tree is exactly what a scanned model initialises.
  tokens = jnp.ones((1, 4), jnp.int32)
  scanned_shapes = nn.meta.unbox(jax.eval_shape(
      lambda: T5(scanned_config).init(jax.random.key(0), tokens, tokens))["params"])
  assert jax.tree.map(lambda x: x.shape, stacked) == jax.tree.map(lambda x: x.shape, scanned_shapes)
  assert stacked["decoder"]["layers"]["self_attention"]["query"].shape == (2, 32, 4, 8)

  encoder_tokens, decoder_tokens = random_tokens((2, 6), seed=7), random_tokens((2, 5), seed=8)
  np.testing.assert_allclose(logits_fn(scanned_config)(stacked, encoder_tokens, decoder_tokens),
                             logits_fn(CONFIG)(params, encoder_tokens, decoder_tokens),
                             atol=1e-5, rtol=1e-5)


def test_full_remat_gives_the_same_gradients(params):
  encoder_tokens, decoder_tokens = random_tokens((2, 6), seed=9), random_tokens((2, 5), seed=10)
  weights = np.random.RandomState(11).normal(size=(2, 5, CONFIG.vocab_size)).astype(np.float32)

  def grads(config):
    loss = lambda p: jnp.sum(
        T5(config).apply({"params": p}, encoder_tokens, decoder_tokens) * weights)
    return jax.jit(jax.grad(loss))(params)
  rematerialised = grads(dataclasses.replace(CONFIG, remat_policy="full"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               rematerialised, grads(CONFIG))


@pytest.mark.parametrize("tie", [False, True])
def test_bfloat16_compute_with_float32_params_runs_close_to_float32(params, tie):
  config = dataclasses.replace(CONFIG, tie_embeddings=tie)
  if tie:  # the same tree without the output projection
    params = {k: v for k, v in params.items() if k != "lm_head"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  encoder_tokens, decoder_tokens = random_tokens((2, 6), seed=12), random_tokens((2, 5), seed=13)
  bfloat16 = dataclasses.replace(config, dtype="bfloat16")
  low = logits_fn(bfloat16)(params, encoder_tokens, decoder_tokens)
  assert low.dtype == jnp.float32 and low.shape == (2, 5, CONFIG.vocab_size)
  full = logits_fn(config)(params, encoder_tokens, decoder_tokens)
  assert np.isfinite(low).all()
  assert np.abs(low - full).max() < 0.1 * np.abs(full).max()

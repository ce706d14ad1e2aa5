"""`layers`: the one projection, the KV-cache write, the output layer and the shared
config checks, each against an independent computation."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import layers
from flan_jax.models.decoder import Decoder, DecoderConfig
from flan_jax.models.families import family_for, mask_unused_ids
from flan_jax.models.t5 import T5Config

DECODER = DecoderConfig(vocab_size=50, vocab_pad_multiple=64, embed_dim=16, num_heads=2,
                        num_kv_heads=1, head_dim=8, mlp_dim=24, num_layers=1)
T5 = T5Config(vocab_size=50, vocab_pad_multiple=64, embed_dim=16, num_heads=2, head_dim=8,
              mlp_dim=24, num_encoder_layers=1, num_decoder_layers=1)


def test_dense_keeps_flax_dense_parameters_values_and_gradients():
  """`Dense` replaced `nn.Dense(use_bias=False)`: the same {"kernel"} from the same rng,
  the same product and weight gradient, and it runs `projection.project` (on a CPU,
  its custom VJP)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  plain = nn.Dense(10, use_bias=False)
  ours = layers.Dense(10, ("embed", "mlp"), DECODER)
  params = plain.init(jax.random.PRNGKey(2), x)
  ours_init = nn.meta.unbox(ours.init(jax.random.PRNGKey(2), x))
  np.testing.assert_array_equal(ours_init["params"]["kernel"], params["params"]["kernel"])
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-6)
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  np.testing.assert_allclose(grad(ours)["params"]["kernel"], grad(plain)["params"]["kernel"],
                             rtol=1e-5)
  assert "custom_vjp_call" in str(jax.make_jaxpr(ours.apply)(params, x))


def test_linear_contracts_attention_weights_as_einsum():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(keys[0], (2, 3, 4))
  w_in = jax.random.normal(keys[1], (4, 5, 6))
  heads = jax.random.normal(keys[2], (2, 3, 5, 6))
  w_out = jax.random.normal(keys[3], (5, 6, 4))
  np.testing.assert_allclose(layers.linear(x, w_in), np.einsum("ble,ehd->blhd", x, w_in),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.linear(heads, w_out), np.einsum("blhd,hde->ble", heads, w_out),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_starts_empty_and_takes_writes_from_the_index(scan):
  cache = layers.init_kv_cache(3, scan, batch_size=2, length=5, num_heads=2, head_dim=4,
                               dtype="bfloat16")
  per_layer = [cache] if scan else list(cache)
  assert len(per_layer) == (1 if scan else 3)
  expected_shape = ((3,) if scan else ()) + (2, 5, 2, 4)
  for layer in per_layer:
    assert set(layer) == {"k", "v"}
    assert all(a.shape == expected_shape and a.dtype == jnp.bfloat16 and not a.any()
               for a in layer.values())
  empty = layers.init_kv_cache(1, False, 2, 5, 2, 4, "float32")[0]
  k, v = jnp.ones((2, 2, 2, 4)), 2 * jnp.ones((2, 2, 2, 4))
  written = layers.write_kv(empty, k, v, jnp.asarray(3))
  expected = np.zeros((2, 5, 2, 4))
  expected[:, 3:5] = 1
  np.testing.assert_array_equal(written["k"], expected)
  np.testing.assert_array_equal(written["v"], 2 * expected)


@pytest.mark.parametrize("config", [DECODER, dataclasses.replace(DECODER, tie_embeddings=False),
                                    dataclasses.replace(T5, tie_embeddings=True), T5],
                         ids=["decoder_tied", "decoder_lm_head", "t5_tied", "t5_lm_head"])
def test_output_logits_by_hand(config):
  """Tied: hidden @ embedding^T (T5 scales the hidden states by embed_dim**-0.5 first);
  else hidden @ lm_head; float32, cut back to vocab_size."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  hidden = jax.random.normal(keys[0], (2, 3, config.embed_dim))
  embedding = jax.random.normal(keys[1], (config.padded_vocab_size, config.embed_dim))
  kernel = jax.random.normal(keys[2], (config.embed_dim, config.padded_vocab_size))
  logits = layers.output_logits(config, hidden, embedding, lambda h: h @ kernel)
  if config.tie_embeddings:
    scale = config.embed_dim ** -0.5 if isinstance(config, T5Config) else 1.0
    expected = np.asarray(hidden) * scale @ np.asarray(embedding).T
  else:
    expected = np.asarray(hidden) @ np.asarray(kernel)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 3, config.vocab_size)
  np.testing.assert_allclose(logits, expected[..., :config.vocab_size], rtol=1e-5, atol=1e-5)
  # The families' projection (the chunked loss's) is the same function over the params.
  params = {"embedding": embedding, "lm_head": {"kernel": kernel}}
  np.testing.assert_allclose(family_for(config).project(params, hidden), logits, rtol=1e-6)


def test_the_model_output_is_the_projection_of_its_hidden_states():
  model = Decoder(dataclasses.replace(DECODER, tie_embeddings=False))
  ids = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, ids, ids, ids))["params"]
  hidden, _ = model.apply({"params": params}, ids, ids, ids, ids, return_hidden=True)
  logits, _ = model.apply({"params": params}, ids, ids, ids, ids)
  np.testing.assert_array_equal(family_for(model.config).project(params, hidden), logits)


def test_masked_score_is_finite_far_below_logits_and_float16_safe():
  logits = jnp.zeros((1, 4), jnp.float16)
  masked = mask_unused_ids(logits, 2)
  assert np.isfinite(np.asarray(masked)).all()
  assert (np.asarray(masked[0, 2:]) < -1e4).all() and not np.asarray(masked[0, :2]).any()
  assert float(mask_unused_ids(jnp.zeros((1, 4)), 2)[0, 3]) == layers.MASKED_SCORE


@pytest.mark.parametrize("config_class", [DecoderConfig, T5Config])
@pytest.mark.parametrize("setting", [{"dropout_rate": 1.0}, {"remat_policy": "sometimes"},
                                     {"attention_implementation": "fastest"}])
def test_both_families_check_the_shared_settings(config_class, setting):
  with pytest.raises(ValueError, match=next(iter(setting))):
    config_class(**setting)


def test_each_family_keeps_its_own_checks_and_defaults():
  with pytest.raises(ValueError, match="num_kv_heads"):
    DecoderConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="feed_forward"):
    T5Config(feed_forward="swish")
  assert (DecoderConfig().mlp_dim, DecoderConfig().tie_embeddings) == (384, True)
  assert (T5Config().mlp_dim, T5Config().tie_embeddings) == (256, False)
  padded = {cls(vocab_size=130).padded_vocab_size for cls in (DecoderConfig, T5Config)}
  assert padded == {256}

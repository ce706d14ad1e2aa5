"""Blocked attention equals jax.nn.dot_product_attention, with masks and biases built a
block at a time, in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models.attention_mask import make_attention_mask
from flan_jax.models.blocked_attention import (block_size_for, blocked_attention,
                                              broadcast_rows, causal_block_attention,
                                              cpu_attention)
from tiny import attention_decoder, packed_ids


@pytest.mark.parametrize("heads, kv_heads, with_bias", [(4, 2, False), (4, 4, True)])
def test_blocked_attention_equals_the_xla_path_in_values_and_gradients(heads, kv_heads, with_bias):
  rng = np.random.default_rng(0)
  B, L, D = 2, 256, 16
  q = jnp.asarray(rng.normal(size=(B, L, heads, D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, L, kv_heads, D)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, L, kv_heads, D)), jnp.float32)
  ids = [jnp.asarray(x) for x in packed_ids(B, L, rng)]
  bias = jnp.asarray(rng.normal(size=(1, heads, L, L)), jnp.float32) if with_bias else None
  full_mask = make_attention_mask(*ids, *ids)

  def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=full_mask, scale=0.3)

  def blocked(q, k, v):
    keys = lambda x, start, size: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
    mask_fn = lambda start, size: make_attention_mask(*ids, *(keys(x, start, size) for x in ids))
    bias_fn = (lambda start, size: jax.lax.dynamic_slice_in_dim(bias, start, size, axis=3)
               ) if with_bias else None
    return blocked_attention(q, k, v, mask_fn=mask_fn, bias_fn=bias_fn, scale=0.3, block_size=64)

  np.testing.assert_allclose(blocked(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: (f(*a) * jnp.cos(jnp.arange(D))).sum()
  for got, want in zip(jax.grad(loss(blocked), (0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_block_sizes_divide_the_keys():
  assert block_size_for(2048) == 256 and block_size_for(1536) == 256
  assert block_size_for(640) == 128 and block_size_for(100) is None


def test_the_decoder_on_the_blocked_path_equals_the_xla_path_packed_and_cached():
  from flan_jax.models.decoder import Decoder, init_cache
  rng = np.random.default_rng(1)
  B, L = 2, 1024  # four blocks of 256 keys
  segments, positions, prefix = (jnp.asarray(x) for x in packed_ids(B, L, rng))
  tokens = jnp.asarray(rng.integers(1, 300, (B, L)), jnp.int32) * (segments > 0)
  xla, blocked = Decoder(attention_decoder("xla")), Decoder(attention_decoder("blocked"))
  params = jax.jit(xla.init)(jax.random.key(0), tokens, positions, segments, prefix)
  run = lambda model: jax.jit(lambda p: model.apply(p, tokens, positions, segments, prefix)[0])
  np.testing.assert_allclose(run(blocked)(params), run(xla)(params), rtol=1e-4, atol=1e-4)
  # Decoding: a prompt into a 1,024-slot cache, then one more token.
  def decode(model):
    cache = init_cache(model.config, B, L)
    step = jax.jit(lambda p, t, pos, c: model.apply(p, t, pos, jnp.ones_like(t), jnp.zeros_like(t),
                                                    cache=c))
    prompt = tokens[:, :16]
    logits, cache = step(params, prompt, jnp.broadcast_to(jnp.arange(16), (B, 16)), cache)
    nxt = jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)
    logits2, _ = step(params, nxt, jnp.full((B, 1), 16), cache)
    return logits, logits2
  for got, want in zip(decode(blocked), decode(xla)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_takes_the_blocked_path_for_long_rows_on_cpu_and_it_holds_no_whole_scores():
  from flan_jax.models.attention_mask import attention_implementation
  from flan_jax.models.families import DecoderOnly
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import train_step as step_lib
  from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
  assert attention_implementation(attention_decoder("auto"), 2048) == "blocked"
  assert attention_implementation(attention_decoder("auto"), 128) == "xla"

  def temp_bytes(implementation):
    config = attention_decoder(implementation, num_heads=8, num_kv_heads=8, head_dim=4)
    network = DecoderOnly(config)
    lengths = {"inputs": 1024, "targets": 1024}
    optimizer = make_optimizer(OptimizerConfig(warmup_steps=0), 10)
    mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    shardings = step_lib.state_shardings(network, optimizer, mesh, lengths)
    state = step_lib.abstract_train_state(network, optimizer, shardings, lengths)
    row = jax.ShapeDtypeStruct((2, 2048), jnp.int32, sharding=mesh_lib.batch_sharding(mesh))
    batch = {k: row for k in ("decoder_input_tokens", "decoder_target_tokens",
                              "decoder_loss_weights", "decoder_segment_ids",
                              "decoder_positions", "decoder_causal_attention")}
    step = step_lib.make_train_step(network, optimizer, mesh, shardings)
    with jax.set_mesh(mesh):
      return step.jitted.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

  scores_per_layer = 2 * 8 * 2048 * 2048 * 4  # [B, H, L, L] float32: 256 MiB
  xla, auto = temp_bytes("xla"), temp_bytes("auto")
  assert xla > 2 * scores_per_layer and auto < scores_per_layer, (xla, auto)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_causal_blocks_equal_the_xla_path_on_causal_packed_rows_in_values_and_gradients(
    heads, kv_heads):
  rng = np.random.default_rng(2)
  B, L, D = 2, 256, 16
  q, k, v = (jnp.asarray(rng.normal(size=(B, L, h, D)), jnp.float32)
             for h in (heads, kv_heads, kv_heads))
  segments, positions, _ = (jnp.asarray(x) for x in packed_ids(B, L, rng))
  causal = jnp.zeros_like(segments)  # no prefix: every row causal
  mask = make_attention_mask(segments, positions, causal, segments, positions, causal)
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3)
  blocks = lambda q, k, v: causal_block_attention(q, k, v, mask, scale=0.3, block_size=64)
  # Padding rows (segment 0, loss-masked) may see other padding the blocks skip; the
  # tokens of examples see exactly the same keys.
  real = np.asarray(segments > 0)[..., None, None]
  weight = jnp.asarray(real * np.cos(np.arange(D)), jnp.float32)
  np.testing.assert_allclose(blocks(q, k, v) * real, reference(q, k, v) * real,
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: (f(*a) * weight).sum()
  for got, want in zip(jax.grad(loss(blocks), (0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_skips_causally_masked_blocks_on_cpu_only_for_causal_rows_without_a_cache():
  from flan_jax.models.attention_mask import attention_implementation
  from flan_jax.models.decoder import Decoder
  causal = attention_decoder("auto", prefix_lm=False)
  rows = dict(self_attention=True, causal=True)
  assert attention_implementation(causal, 512, **rows) == "causal_blocks"
  assert attention_implementation(causal, 512, self_attention=True) == "xla"  # a prefix-LM
  assert attention_implementation(causal, 512, causal=True) == "xla"  # a cache
  assert attention_implementation(causal, 128, **rows) == "xla"
  assert attention_implementation(causal, 2048, **rows) == "blocked"
  assert attention_implementation(attention_decoder("causal_blocks"), 100, **rows) == "xla"
  # The decoder: the same logits for every token of an example, as a causal model and
  # as a prefix-LM (whose rows cannot skip, and take the XLA path).
  rng = np.random.default_rng(3)
  B, L = 2, 512
  segments, positions, prefix = (jnp.asarray(x) for x in packed_ids(B, L, rng))
  tokens = jnp.asarray(rng.integers(1, 300, (B, L)), jnp.int32) * (segments > 0)
  real = np.asarray(segments > 0)[..., None]
  for prefix_lm in (False, True):
    xla, auto = (Decoder(attention_decoder(name, prefix_lm=prefix_lm)) for name in ("xla", "auto"))
    params = jax.jit(xla.init)(jax.random.key(0), tokens, positions, segments, prefix)
    run = lambda model: jax.jit(lambda p: model.apply(p, tokens, positions, segments,
                                                      prefix)[0])(params)
    np.testing.assert_allclose(run(auto) * real, run(xla) * real, rtol=1e-4, atol=1e-4)


def _t5(implementation):
  from flan_jax.models.t5 import T5Config
  return T5Config(vocab_size=300, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  relative_attention_max_distance=64, attention_implementation=implementation)


def test_t5_on_the_blocked_path_equals_the_xla_path_packed_in_values_gradients_and_decoding():
  # Every attention of T5 blocked: the encoder's (bidirectional bias), the decoder's
  # (causal bias, positions) and cross-attention (no bias), three blocks of 64 keys
  # each, over distances past the buckets' exact range.
  from flan_jax.models.t5 import T5, init_cache
  rng = np.random.default_rng(5)
  B, L = 2, 192
  ids = [packed_ids(B, L, rng) for _ in range(2)]
  (enc_segments, enc_positions, _), (dec_segments, dec_positions, _) = ids
  dec_segments = np.minimum(dec_segments, enc_segments.max(axis=1, keepdims=True))
  dec_segments = np.where(dec_segments[:, :1] == 0, 1, dec_segments)
  enc_tokens, dec_tokens = (rng.integers(1, 300, (B, L)) * (s > 0)
                            for s in (enc_segments, dec_segments))
  args = [jnp.asarray(x, jnp.int32) for x in (enc_tokens, dec_tokens, enc_segments, dec_segments,
                                               enc_positions, dec_positions)]
  xla, blocked = T5(_t5("xla")), T5(_t5("blocked"))
  params = jax.jit(xla.init)(jax.random.key(0), *args)
  real = np.asarray(dec_segments > 0)[..., None]
  loss = lambda model: jax.jit(jax.value_and_grad(
      lambda p: (model.apply(p, *args) * real * jnp.cos(jnp.arange(300))).sum()))
  (got, got_grads), (want, want_grads) = loss(blocked)(params), loss(xla)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
  # Cached decoding (one query a step) keeps whole masks on the blocked config too.
  def decode(model):
    encoded = model.apply(params, args[0], args[2], method=T5.encode)
    cache = init_cache(model.config, B, 8)
    step = lambda t, c: model.apply(params, encoded, args[2], t, cache=c, method=T5.decode)
    logits, cache = step(jnp.zeros((B, 1), jnp.int32), cache)
    return step(jnp.argmax(logits, -1).astype(jnp.int32), cache)[0]
  np.testing.assert_allclose(decode(blocked), decode(xla), rtol=1e-4, atol=1e-4)


def test_t5_auto_blocks_long_inputs_and_no_layer_keeps_its_whole_scores():
  import dataclasses
  from flan_jax.models.t5 import T5
  B, L = 2, 1024

  def temp_bytes(implementation, encoder_layers):
    model = T5(dataclasses.replace(_t5(implementation), num_encoder_layers=encoder_layers,
                                   num_decoder_layers=1))
    tokens, targets = (jax.ShapeDtypeStruct((B, n), jnp.int32) for n in (L, 64))
    params = jax.eval_shape(model.init, jax.random.key(0), tokens, targets)
    grads = jax.jit(jax.grad(lambda p, x, y: model.apply(p, x, y).sum()))
    return grads.lower(params, tokens, targets).compile().memory_analysis().temp_size_in_bytes

  # What one more encoder layer adds to a training step's memory: on XLA's path at
  # least its [B, H, L, L] float32 scores (32 MiB) kept for the backward pass; on the
  # blocked path ("auto" at 1,024 keys) its activations and a block's bias, 7 MiB.
  scores = B * 4 * L * L * 4
  xla, auto = (temp_bytes(name, 2) - temp_bytes(name, 1) for name in ("xla", "auto"))
  assert xla > scores and auto < scores / 4, (xla, auto)


def test_the_bias_broadcast_to_every_row_has_the_summed_gradient():
  """`broadcast_rows` (the shared relative position bias as one per row, its gradient
  summed by a matrix product) against jnp.broadcast_to's own gradient."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  bias = jax.random.normal(keys[0], (1, 3, 5, 7))
  g = jax.random.normal(keys[1], (4, 3, 5, 7))
  loss = lambda f: lambda b: jnp.sum(f(b) * g)
  ours = jax.value_and_grad(loss(lambda b: broadcast_rows(b, 4)))(bias)
  reference = jax.value_and_grad(loss(lambda b: jnp.broadcast_to(b, (4, 3, 5, 7))))(bias)
  np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
  np.testing.assert_allclose(ours[1], reference[1], rtol=1e-5, atol=1e-6)
  assert ours[1].shape == (1, 3, 5, 7)


def test_cpu_attention_equals_jax_attention_in_value_and_every_gradient():
  """`cpu_attention` (normalised after the values, the bias broadcast by
  `broadcast_rows`) against `jax.nn.dot_product_attention` on packed rows with a bias,
  one of whose query rows has every key masked."""
  B, L, H, D = 2, 6, 3, 4
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q, k, v = (jax.random.normal(key, (B, L, H, D)) for key in keys[:3])
  bias = jax.random.normal(keys[3], (1, H, L, L))
  g = jax.random.normal(keys[4], (B, L, H, D))
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  mask = make_attention_mask(segments, None, None, segments, None, None)
  mask = mask.at[0, 0, 5].set(False)  # query 5 of row 0: no key
  assert not bool(mask[0, 0, 5].any())
  loss = lambda f: lambda q, k, v, bias: jnp.sum(f(q, k, v, mask, bias) * g)
  reference = lambda q, k, v, mask, bias: jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=mask, scale=1.0, implementation="xla")
  ours = jax.value_and_grad(loss(cpu_attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
  theirs = jax.value_and_grad(loss(reference), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)

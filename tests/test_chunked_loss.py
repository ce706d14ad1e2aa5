"""The loss computed a chunk of positions at a time equals the whole-batch loss, and
never holds the whole batch's float32 logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.t5 import T5Config
from flan_jax.training import losses
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer

TINY_T5 = T5Config(vocab_size=300, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                   num_encoder_layers=1, num_decoder_layers=1)
TINY_DECODER = DecoderConfig(vocab_size=300, num_layers=1, embed_dim=32, num_heads=4,
                             num_kv_heads=2, head_dim=8, mlp_dim=64)


def _batch(network, lengths, rows=4, seed=0):
  rng = np.random.default_rng(seed)
  tokens = lambda length: rng.integers(1, 300, (rows, length)).astype(np.int32)
  if network.encoder_decoder:
    targets = tokens(lengths["targets"])
    batch = {"encoder_input_tokens": tokens(lengths["inputs"]),
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": targets}
  else:
    row = tokens(lengths["inputs"] + lengths["targets"])
    batch = {"decoder_input_tokens": np.pad(row[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": row,
             "decoder_causal_attention": (np.arange(row.shape[1]) < lengths["inputs"]
                                          ).astype(np.int32)[None].repeat(rows, 0)}
  weights = (rng.random(batch["decoder_target_tokens"].shape) < 0.7).astype(np.float32)
  return {**batch, "decoder_loss_weights": weights}


@pytest.mark.parametrize("config", [TINY_DECODER, dataclasses.replace(TINY_DECODER, tie_embeddings=False),
                                    TINY_T5, dataclasses.replace(TINY_T5, tie_embeddings=True)],
                         ids=["decoder_tied", "decoder_untied", "t5", "t5_tied"])
def test_chunked_loss_and_gradients_equal_the_whole_batch_ones(config):
  family = EncoderDecoder if isinstance(config, T5Config) else DecoderOnly
  network = family(config)
  lengths = {"inputs": 12, "targets": 13}  # 13 or 25 target positions: chunks of 4 pad
  params = jax.jit(lambda rng: step_lib.init_params(network, rng, lengths))(jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in _batch(network, lengths).items()}
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]

  def whole(params):
    ce, z = losses.token_losses(network.logits(params, batch), targets, 1e-3, 0.1)
    return (ce * weights).sum() + (z * weights).sum()

  def chunked(params):
    ce, z = losses.chunked_loss_sums(network, params, network.hidden_states(params, batch),
                                     targets, weights, 1e-3, 0.1, chunk_length=4)
    return ce + z

  (a, grads_a), (b, grads_b) = (jax.jit(jax.value_and_grad(f))(params) for f in (whole, chunked))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # float summation order


def _temp_bytes(chunk_length):
  """Per-step temporary memory of the compiled train step, for a 32k vocabulary."""
  config = DecoderConfig(vocab_size=32000, num_layers=1, embed_dim=64, num_heads=2,
                         num_kv_heads=2, head_dim=32, mlp_dim=128, tie_embeddings=False)
  network, lengths = DecoderOnly(config), {"inputs": 256, "targets": 256}
  optimizer = make_optimizer(OptimizerConfig(warmup_steps=0), 10)
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  shardings = step_lib.state_shardings(network, optimizer, mesh, lengths)
  state = step_lib.abstract_train_state(network, optimizer, shardings, lengths)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=mesh_lib.batch_sharding(mesh))
           for k, v in _batch(network, lengths, rows=8).items()}
  step = step_lib.make_train_step(network, optimizer, mesh, shardings,
                                  losses.cross_entropy_loss(chunk_length=chunk_length))
  with jax.set_mesh(mesh):
    return step.jitted.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def test_chunks_keep_the_whole_batch_logits_out_of_memory():
  logits_bytes = 8 * 512 * 32000 * 4  # [B, L, V] float32: 524 MB
  whole, chunked = _temp_bytes(0), _temp_bytes(64)
  assert whole > logits_bytes, whole
  assert chunked < logits_bytes / 2, (whole, chunked)


def test_a_train_step_with_chunks_takes_the_whole_batch_step():
  network, lengths = DecoderOnly(TINY_DECODER), {"inputs": 12, "targets": 13}
  optimizer = make_optimizer(OptimizerConfig(warmup_steps=0), 10)
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  batch = step_lib.global_batch(_batch(network, lengths, rows=8), mesh)
  results = []
  for chunk_length in (0, 8):
    state, shardings = step_lib.init_train_state(network, optimizer, mesh, lengths, seed=0)
    step = step_lib.make_train_step(network, optimizer, mesh, shardings,
                                    losses.cross_entropy_loss(z_loss=1e-3, chunk_length=chunk_length))
    results.append(step(state, batch))
  (whole, whole_metrics), (chunked, chunked_metrics) = results
  np.testing.assert_allclose(whole_metrics["loss"], chunked_metrics["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(chunked.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

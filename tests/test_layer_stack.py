"""Scanned and rematerialised layer stacks compute exactly what the plain loop does."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.evaluation.decoding import make_greedy_generate
from flan_jax.models.decoder import Decoder
from flan_jax.models.layer_stack import stack_layers, unstack_layers
from tiny import TINY_DECODER


def inputs(batch=2, length=10, seed=0):
  tokens = np.random.RandomState(seed).randint(1, TINY_DECODER.vocab_size, (batch, length))
  positions = np.broadcast_to(np.arange(length), tokens.shape)
  ones = np.ones_like(tokens)
  prefix = (positions < 4).astype(np.int32)
  return tokens, positions, ones, prefix


def unrolled_params():
  params = Decoder(TINY_DECODER).init(jax.random.key(0), *inputs())["params"]
  return nn.meta.unbox(params)


def test_stack_and_unstack_are_inverse_and_give_the_scanned_layout():
  params = unrolled_params()
  stacked = stack_layers(params)
  assert "layers_0" not in stacked and stacked["layers"]["mlp"]["up"]["kernel"].shape == (
      TINY_DECODER.num_layers, TINY_DECODER.embed_dim, TINY_DECODER.mlp_dim)
  scanned_config = dataclasses.replace(TINY_DECODER, scan_layers=True)
  expected = jax.eval_shape(lambda: nn.meta.unbox(
      Decoder(scanned_config).init(jax.random.key(0), *inputs())["params"]))
  assert jax.tree.structure(stacked) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), stacked, expected)
  jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), params)


def test_scanned_parameters_carry_the_layers_axis_name():
  scanned_config = dataclasses.replace(TINY_DECODER, scan_layers=True)
  boxed = jax.eval_shape(lambda: Decoder(scanned_config).init(jax.random.key(0), *inputs())["params"])
  spec = nn.get_partition_spec(boxed)
  assert tuple(spec["layers"]["attention"]["query"]) == ("layers", "embed", "heads", "kv")


def test_scanned_decoder_gives_the_unrolled_logits():
  params = unrolled_params()
  scanned = Decoder(dataclasses.replace(TINY_DECODER, scan_layers=True))
  expected, _ = Decoder(TINY_DECODER).apply({"params": params}, *inputs())
  got, _ = scanned.apply({"params": stack_layers(params)}, *inputs())
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_rematerialised_gradients_equal_the_plain_ones(scan, policy):
  params = unrolled_params()
  if scan:
    params = stack_layers(params)

  def grads(config):
    def loss(p):
      logits, _ = Decoder(config).apply({"params": p}, *inputs())
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1))
    return jax.grad(loss)(params)

  plain = grads(dataclasses.replace(TINY_DECODER, scan_layers=scan))
  remat = grads(dataclasses.replace(TINY_DECODER, scan_layers=scan, remat_policy=policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), remat, plain)


def test_scanned_cached_decoding_generates_what_the_unrolled_decoder_does():
  params = unrolled_params()
  prompts = np.random.RandomState(3).randint(1, TINY_DECODER.vocab_size, (3, 6)).astype(np.int32)
  mask = np.ones_like(prompts)
  mask[0, :2] = 0  # one left-padded row
  plain = make_greedy_generate(Decoder(TINY_DECODER), params, 8, eos_id=-1)(prompts, mask)
  scanned_model = Decoder(dataclasses.replace(TINY_DECODER, scan_layers=True))
  scanned = make_greedy_generate(scanned_model, stack_layers(params), 8, eos_id=-1)(prompts, mask)
  np.testing.assert_array_equal(scanned, plain)


def test_an_unknown_remat_policy_names_the_known_ones():
  with pytest.raises(ValueError, match="'dots_with_no_batch_dims'"):
    dataclasses.replace(TINY_DECODER, remat_policy="everything")

"""`projection.project`: x @ w whose weight gradient transposes the narrower operand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models.projection import dense_dot_general, project


def _reference(x, w):
  return jnp.einsum("bli,io->blo", x, w)


@pytest.mark.parametrize("features", [(8, 24), (24, 8), (16, 16)])
def test_value_and_both_gradients_equal_jax_matmul(features):
  fan_in, fan_out = features
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (2, 5, fan_in))
  w = jax.random.normal(keys[1], (fan_in, fan_out))
  g = jax.random.normal(keys[2], (2, 5, fan_out))
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)
  ours = jax.value_and_grad(loss(project), argnums=(0, 1))(x, w)
  reference = jax.value_and_grad(loss(_reference), argnums=(0, 1))(x, w)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _weight_gradient_lhs(fan_in, fan_out):
  """The shape of the left operand of the backward pass's weight-gradient matmul."""
  x, w = jnp.ones((4, fan_in)), jnp.ones((fan_in, fan_out))
  jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(project(x, w))))(w)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"
          and e.params["dimension_numbers"][0] == ((0,), (0,))]
  assert len(dots) == 1
  return dots[0].invars[0].aval.shape


def test_the_narrower_side_is_the_one_transposed():
  assert _weight_gradient_lhs(8, 24) == (4, 8)  # x, 8 wide, not the 24-wide gradient
  assert _weight_gradient_lhs(24, 8) == (4, 8)  # the 8-wide gradient, not x


def test_flax_dense_with_it_keeps_its_parameters_and_values():
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  plain, ours = nn.Dense(10, use_bias=False), nn.Dense(10, use_bias=False,
                                                       dot_general=dense_dot_general)
  params = plain.init(jax.random.PRNGKey(2), x)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(2), x)) == jax.tree.structure(params)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-6)
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  np.testing.assert_allclose(grad(ours)["params"]["kernel"], grad(plain)["params"]["kernel"],
                             rtol=1e-5)

"""`projection.project`: x @ w whose weight gradient transposes the narrower operand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import layer_stack
from flan_jax.models.projection import project


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


def _equations(jaxpr):
  """Every equation of a jaxpr, those of the jaxprs nested in it (jit, remat) included."""
  for equation in jaxpr.eqns:
    yield equation
    for param in equation.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        yield from _equations(inner)


def _weight_gradient_lhs(fan_in, fan_out):
  """The shape of the left operand of the backward pass's weight-gradient matmul."""
  x, w = jnp.ones((4, fan_in)), jnp.ones((fan_in, fan_out))
  jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(project(x, w))))(w)
  dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"
          and e.params["dimension_numbers"][0] == ((0,), (0,))]
  assert len(dots) == 1
  return dots[0].invars[0].aval.shape


def test_the_narrower_side_is_the_one_transposed():
  assert _weight_gradient_lhs(8, 24) == (4, 8)  # x, 8 wide, not the 24-wide gradient
  assert _weight_gradient_lhs(24, 8) == (4, 8)  # the 8-wide gradient, not x


def test_bfloat16_inputs_give_bfloat16_input_gradient_and_float32_weight_gradient():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 8)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(4), (8, 16))
  assert project(x, w.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  dx, dw = jax.grad(lambda x, w: jnp.sum(project(x, w.astype(jnp.bfloat16))
                                         .astype(jnp.float32)), argnums=(0, 1))(x, w)
  assert (dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.float32)
  reference = jax.grad(lambda w: jnp.sum(_reference(x.astype(jnp.float32), w)))(w)
  np.testing.assert_allclose(dw, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("policy, recomputed_dots", [("dots", 4), ("full", 6)])
def test_the_dots_remat_policies_keep_projections_instead_of_recomputing_them(
    policy, recomputed_dots):
  """The custom VJP hides its matmul from jax's "dots" policies; the named output keeps
  it saved, so the backward pass runs only the four gradient products of two layers."""
  def layer(x, w_in, w_out):
    return jnp.sum(jnp.tanh(project(jax.nn.silu(project(x, w_in)), w_out)))
  grad = jax.grad(jax.checkpoint(layer, policy=layer_stack.REMAT_POLICIES[policy]),
                  argnums=(1, 2))
  jaxpr = jax.make_jaxpr(grad)(jnp.ones((4, 8)), jnp.ones((8, 16)), jnp.ones((16, 8)))
  rematerialised = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("checkpoint", "remat2")]
  assert len(rematerialised) == 1
  dots = [e for e in _equations(rematerialised[0].params["jaxpr"])
          if e.primitive.name == "dot_general"]
  assert len(dots) == recomputed_dots

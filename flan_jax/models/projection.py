"""x @ w for a layer's weight, with a weight gradient that transposes the narrower side.

The weight gradient of y = x @ w contracts the token axes of x [..., in] and of the
output gradient g [..., out]. A matrix-multiply kernel takes its left operand with the
contracted axis last, so one of the two is transposed first; jax's own rule always
transposes g. On a CPU that copy is not free (XLA:CPU writes it from the fusion that
makes g, with strided stores): in decoder_10m, g is 2.75x wider than x for SwiGLU's
gate and up projections and 32x for the output layer. `project` transposes x when it
is the narrower (in <= out) and g otherwise: the same products, one matmul's operands
in the other order.

Only on CPUs, where it was measured (a decoder_10m step 20% faster); elsewhere
`project` is jax's own product, as GPU and TPU matmuls read either operand transposed.
Its output is named `PROJECTION` for the rematerialisation policies: a custom VJP
hides the matmul inside it from jax's "dots" policies, which would otherwise recompute it.
"""

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

PROJECTION = "projection"  # the checkpoint name of every `project` output


def _product(x_xI, w_IxO):
  return jax.lax.dot_general(x_xI, w_IxO, (((x_xI.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _narrow_side_product(x_xI: jnp.ndarray, w_IxO: jnp.ndarray) -> jnp.ndarray:
  return _product(x_xI, w_IxO)


def _narrow_side_forward(x_xI, w_IxO):
  return _product(x_xI, w_IxO), (x_xI, w_IxO)


def _narrow_side_backward(residuals, g_xO):
  x_xI, w_IxO = residuals
  dx = jax.lax.dot_general(g_xO, w_IxO, (((g_xO.ndim - 1,), (1,)), ((), ())))
  token_axes = tuple(range(x_xI.ndim - 1))  # the same leading axes in x and g
  contract = ((token_axes, token_axes), ((), ()))
  if w_IxO.shape[0] <= w_IxO.shape[1]:  # x is the narrower: x^T @ g
    dw = jax.lax.dot_general(x_xI, g_xO, contract)
  else:  # (g^T @ x)^T: the transposed result is only [in, out]
    dw = jax.lax.dot_general(g_xO, x_xI, contract).T
  return dx.astype(x_xI.dtype), dw.astype(w_IxO.dtype)


_narrow_side_product.defvjp(_narrow_side_forward, _narrow_side_backward)


def project(x_xI: jnp.ndarray, w_IxO: jnp.ndarray) -> jnp.ndarray:
  """x [..., in] @ w [in, out] -> [..., out], named `PROJECTION`."""
  product = _narrow_side_product if jax.default_backend() == "cpu" else _product
  return checkpoint_name(product(x_xI, w_IxO), PROJECTION)

"""x @ w for a layer's weight, with a weight gradient that transposes the narrower side.

The weight gradient of y = x @ w contracts the token axes of x [T, in] and of the
output gradient g [T, out]. A matrix-multiply kernel takes its left operand with the
contracted axis last, so one of the two is transposed first; jax's own rule always
transposes g. On a CPU that copy is not free (XLA:CPU writes it from the fusion that
makes g, with strided stores): for a SwiGLU MLP's gate and up projections and for the
output projection, g is 2.75x and 32x wider than x. `project` transposes x when it is
the narrower (in <= out) and g otherwise. The forward pass and both gradients are the
same products as jax's; only the operand order of one matmul changes.
"""

import jax
import jax.numpy as jnp


def _tokens(x) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


@jax.custom_vjp
def project(x_TxI: jnp.ndarray, w_IxO: jnp.ndarray) -> jnp.ndarray:
  """x [..., in] @ w [in, out] -> [..., out]."""
  return jax.lax.dot_general(x_TxI, w_IxO, (((x_TxI.ndim - 1,), (0,)), ((), ())))


def _forward(x_TxI, w_IxO):
  return project(x_TxI, w_IxO), (x_TxI, w_IxO)


def _backward(residuals, g_TxO):
  x_TxI, w_IxO = residuals
  dx = jax.lax.dot_general(g_TxO, w_IxO, (((g_TxO.ndim - 1,), (1,)), ((), ())))
  tokens = (_tokens(x_TxI), _tokens(g_TxO))
  if w_IxO.shape[0] <= w_IxO.shape[1]:  # x is the narrower: x^T @ g
    dw = jax.lax.dot_general(x_TxI, g_TxO, (tokens, ((), ())))
  else:  # (g^T @ x)^T: the transposed result is only [in, out]
    dw = jax.lax.dot_general(g_TxO, x_TxI, (tokens[::-1], ((), ()))).T
  return dx.astype(x_TxI.dtype), dw.astype(w_IxO.dtype)


project.defvjp(_forward, _backward)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`flax.linen.Dense(dot_general=...)`: `project` for Dense's own product (last axis of
  the input against the kernel's first, default precision); any other call is
  `jax.lax.dot_general` unchanged."""
  dense = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (tuple(map(tuple, dimension_numbers[0])), tuple(map(tuple, dimension_numbers[1]))) != dense \
      or precision is not None or preferred_element_type is not None or rhs.ndim != 2:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return project(lhs, rhs)

"""Linear layers applied to the rows of a 2-D view of their input.

A linear layer on a (B, T, D) input contracts its kernel gradient over two axes, and XLA canonicalises
that dot by transposing the activations into a copy before the matmul; on a (B*T, D) view the same
gradient is a plain transposed-operand matmul (bench/README.md: the copies were 14 % of the CPU step).
Reshaping to and from the 2-D view is free (a bitcast).

On the CPU the rows' matmul also chooses the orientation of its kernel gradient (`rows_dot_general`):
XLA:CPU's Eigen dot runs `x^T dy` ~25 % slower when the kernel is taller than wide (fc2, (4D, D)) than
`(dy^T x)^T`, and folds a plain transposition back, so the product is kept apart from its transposition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LINEAR_INIT = nnx.initializers.truncated_normal(stddev=0.02)
ROWS = (((1,), (0,)), ((), ()))  # dot_general dimension numbers of (M, K) x (K, N) -> (M, N)


def over_rows(fn, x: jax.Array) -> jax.Array:
    """`fn` applied to `x` viewed as a matrix of its last axis: (..., D) -> (..., D')."""
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


@jax.custom_vjp
def _rows_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return x @ kernel


def _rows_matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _rows_matmul_bwd(residuals, dy):
    x, kernel = residuals
    if kernel.shape[0] > kernel.shape[1] and jax.default_backend() == "cpu":
        # the wide product, then its transposition; the barrier keeps XLA from folding the two into the slow dot
        d_kernel = jax.lax.optimization_barrier(dy.T @ x).T
    else:
        d_kernel = x.T @ dy
    return dy @ kernel.T, d_kernel


_rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


def rows_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """`jax.lax.dot_general` for `nnx.Linear`, with `_rows_matmul`'s kernel gradient on (M, K) x (K, N)."""
    if (lhs.ndim == rhs.ndim == 2 and dimension_numbers == ROWS and lhs.dtype == rhs.dtype and precision is None
            and preferred_element_type is None and kwargs.get("out_sharding") is None):
        return _rows_matmul(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


class Linear(nnx.Linear):
    """`nnx.Linear` (same parameters and result) over the rows of its input."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return over_rows(super().__call__, inputs)


def linear(din: int, dout: int, rngs: nnx.Rngs, dtype=jnp.float32) -> Linear:
    """DINOv2's linear layer: truncated-normal(0.02) kernel, zero bias."""
    return Linear(din, dout, dtype=dtype, kernel_init=LINEAR_INIT, dot_general=rows_dot_general, rngs=rngs)


class LoRALinear(nnx.LoRALinear):
    """`nnx.LoRALinear` (same parameters and result) over the rows of its input."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return over_rows(super().__call__, x)

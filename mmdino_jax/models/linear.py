"""Linear layers applied to the rows of a 2-D view of their input.

A linear layer on a (B, T, D) input contracts its kernel gradient over two axes, and XLA canonicalises
that dot by transposing the activations into a copy before the matmul; on a (B*T, D) view the same
gradient is a plain transposed-operand matmul (bench/README.md: the copies were 14 % of the CPU step).
Reshaping to and from the 2-D view is free (a bitcast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LINEAR_INIT = nnx.initializers.truncated_normal(stddev=0.02)


def over_rows(fn, x: jax.Array) -> jax.Array:
    """`fn` applied to `x` viewed as a matrix of its last axis: (..., D) -> (..., D')."""
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class Linear(nnx.Linear):
    """`nnx.Linear` (same parameters and result) over the rows of its input."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return over_rows(super().__call__, inputs)


def linear(din: int, dout: int, rngs: nnx.Rngs, dtype=jnp.float32) -> Linear:
    """DINOv2's linear layer: truncated-normal(0.02) kernel, zero bias."""
    return Linear(din, dout, dtype=dtype, kernel_init=LINEAR_INIT, rngs=rngs)


class LoRALinear(nnx.LoRALinear):
    """`nnx.LoRALinear` (same parameters and result) over the rows of its input."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return over_rows(super().__call__, x)

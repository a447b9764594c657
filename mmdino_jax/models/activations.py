"""Exact (erf) GELU, written as PyTorch's `nn.GELU()` computes it: 0.5 x (1 + erf(x / sqrt 2)).

`jax.nn.gelu(approximate=False)` goes through `erfc`, which XLA:CPU evaluates ~2x slower than `erf`
(bench/bench_gelu.py, bench/README.md); the two agree to float32 round-off (tests/test_vit.py).
"""

import jax
import numpy as np

_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


def gelu(x: jax.Array) -> jax.Array:
    return 0.5 * x * (1.0 + jax.lax.erf(x * _INV_SQRT2.astype(x.dtype)))

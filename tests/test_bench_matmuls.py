"""bench/bench_matmuls.py: the layer shapes of a config and the three matmuls it times."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_matmuls  # noqa: E402

from mmdino_jax.config_base import load_config  # noqa: E402


def test_layer_shapes_of_the_demo():
    config = load_config(str(ROOT / "configs/demo.py"))
    d = config.data
    shapes = bench_matmuls.layer_shapes(config)
    tokens = lambda size: 1 + 4 * (size // 14) ** 2  # 4 sequences, patch 14, no registers
    assert shapes == [
        (f"{crop} {name}", rows, din, dout)
        for crop, rows in (("global", d.batch_size * 2 * tokens(d.global_crops_size)),
                           ("local", d.batch_size * d.local_crops_number * tokens(d.local_crops_size)))
        for name, din, dout in (("qkv", 192, 576), ("proj", 192, 192), ("fc1", 192, 768), ("fc2", 768, 192))]


@pytest.mark.parametrize("din, dout", [(24, 40), (40, 24)])  # wide and tall kernels: both gradient orientations
def test_the_timed_matmuls_compute_the_layer_and_its_gradients(din, dout):
    forward, d_input, d_kernel = (np.asarray(fn()) for fn in bench_matmuls.jax_matmuls(50, din, dout, np.float32))
    t_forward, t_input, t_kernel = (fn().numpy() for fn in bench_matmuls.torch_matmuls(50, din, dout))
    assert forward.shape == t_forward.shape == (50, dout)
    assert d_input.shape == t_input.shape == (50, din)
    assert d_kernel.shape == (din, dout) and t_kernel.shape == (dout, din)  # nn.Linear stores (d_out, d_in)
    # the same products as a numpy reference on the JAX side's own inputs
    keys = jax.random.split(jax.random.key(0), 3)
    x, w, dy = (np.asarray(jax.random.normal(k, s)) for k, s in zip(keys, ((50, din), (din, dout), (50, dout))))
    np.testing.assert_allclose(forward, x @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_input, dy @ w.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_kernel, x.T @ dy, rtol=1e-4, atol=1e-4)

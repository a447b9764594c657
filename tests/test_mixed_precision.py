"""bfloat16 compute with float32 master weights, the default on GPU and TPU (`model.dtype = auto`), against
float32: the same run's first steps give the same losses to bfloat16's precision. docs/mixed_precision.md
compares whole demo runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdino_jax import sharding
from mmdino_jax.config_base import load_config
from mmdino_jax.models.build import compute_dtype
from mmdino_jax.ssl.learner import build_learner, random_batch
from mmdino_jax.ssl.step import LOSS_TERMS
from mmdino_jax.training.sharded import shard_learner

STEPS = 12


def _run(dtype: str):
    """The smoke SSL run's losses over STEPS steps (three batches in turn), and its lowered step (StableHLO text)."""
    config = load_config("configs/demo.py:smoke")
    config.model.dtype = dtype
    run = shard_learner(build_learner(config), sharding.make_mesh(1, jax.devices()[:1]))
    state, key = run.state, run.key(0)
    batches = [run.global_batch(random_batch(config, seed=i)) for i in range(3)]
    hlo = run.step.lower(state, batches[0], key).as_text()
    records = []
    for i in range(STEPS):
        state, metrics = run.step(state, batches[i % 3], key)
        records.append({k: float(metrics[k]) for k in ("loss", *LOSS_TERMS)})
    params = jax.tree.leaves(state["student"])
    return records, hlo, params


@pytest.fixture(scope="module")
def runs():
    return {dtype: _run(dtype) for dtype in ("float32", "bfloat16")}


def test_auto_is_bfloat16_on_accelerators_and_float32_on_cpu():
    assert compute_dtype("auto", "gpu") == compute_dtype("auto", "tpu") == "bfloat16"
    assert compute_dtype("auto", "cpu") == "float32"
    assert compute_dtype("float32", "gpu") == "float32"


def test_bfloat16_step_tracks_float32_losses(runs):
    (f32, hlo32, _), (bf16, hlo16, params16) = runs["float32"], runs["bfloat16"]
    # the bf16 step really multiplies in bf16 (and the float32 one does not), with float32 master weights
    assert "xbf16>" in hlo16 and "bf16" not in hlo32  # StableHLO tensor types, e.g. tensor<8x64xbf16>
    assert all(p.dtype == jnp.float32 for p in params16)
    for term in ("loss", *LOSS_TERMS):
        a, b = np.array([r[term] for r in f32]), np.array([r[term] for r in bf16])
        assert np.all(np.isfinite(b)), term
        # seen: at most 1.1 % apart over 12 steps; bf16 keeps 8 bits of mantissa (0.4 % per rounding)
        np.testing.assert_allclose(b, a, rtol=0.03, err_msg=term)
    # the losses move over the run, so tracking them is not trivially true of a constant
    assert abs(f32[-1]["loss"] - f32[0]["loss"]) > 0.1

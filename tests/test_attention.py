"""Every attention implementation against the plain formula (outputs and gradients, float32 and bfloat16),
the backend choice, and the patch embedding against the stride-p convolution it replaces. The whole model
with the default implementation and masked tokens is checked against PyTorch in test_vit_parity.py, and
`cls_attention` in test_vit.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmdino_jax.models import attention
from mmdino_jax.models.vit import PatchEmbed, ViTConfig

# Image count, tokens (not a multiple of any block size), heads, head_dim.
SHAPE = (3, 37, 2, 16)
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _qkvg(dtype, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for _ in range(4))


def _value_and_grads(fn, q, k, v, g):
    """Output and its vector-Jacobian product with g (dq, dk, dv), in float32, from one compilation."""

    @jax.jit
    def run(q, k, v, g):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(g.astype(out.dtype)))

    return [np.asarray(x, np.float32) for x in run(q, k, v, g)]


@functools.lru_cache(maxsize=None)
def _reference(dtype_name):
    """The plain formula in float32 on the (rounded) inputs of `dtype_name`."""
    q, k, v, g = _qkvg(jnp.dtype(dtype_name))
    return _value_and_grads(attention.reference_attention, *(x.astype(jnp.float32) for x in (q, k, v, g)))


def _assert_parity(fn, dtype):
    q, k, v, g = _qkvg(dtype)
    # The reference runs in float32 on the same (rounded) inputs: bf16 paths are judged against exact math.
    want = _reference(jnp.dtype(dtype).name)
    assert jax.eval_shape(fn, q, k, v).dtype == dtype
    got = _value_and_grads(fn, q, k, v, g)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=TOL[dtype] * max(1.0, np.abs(b).max()), err_msg=name)


@pytest.mark.parametrize("impl, dtype", [("xla_cpu", jnp.float32), ("xla_cpu", jnp.bfloat16),
                                         ("xla", jnp.float32)])
def test_implementation_matches_plain_formula(impl, dtype):
    _assert_parity(lambda q, k, v: attention.dot_product_attention(q, k, v, impl), dtype)


def test_reference_is_the_textbook_formula():
    q, k, v, _ = _qkvg(jnp.float32)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention.reference_attention(q, k, v), np.einsum("bhqk,bkhd->bqhd", p, vn),
                               atol=1e-5)
    np.testing.assert_allclose(attention.attention_weights(q, k), p, atol=1e-6)


def test_splash_kernel_in_interpret_mode():
    """The TPU path's padding, key mask and scaling, through Pallas' interpreter (forward only: the
    interpreted backward takes ~20 s)."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    q, k, v, _ = _qkvg(jnp.float32, (1, 37, 1, 16))
    got = attention._splash_attention(q, k, v, interpret=True)
    np.testing.assert_allclose(got, attention.reference_attention(q, k, v), atol=1e-5)


def test_auto_picks_the_backend_implementation():
    assert attention.resolve("auto", jnp.float32, 64, "cpu") == "xla_cpu"
    assert attention.resolve("auto", jnp.bfloat16, 64, "gpu") == "cudnn"
    assert attention.resolve("auto", jnp.float32, 64, "gpu") == "xla"     # cuDNN flash needs 16-bit
    assert attention.resolve("auto", jnp.bfloat16, 160, "gpu") == "xla"   # and head_dim <= 128
    assert attention.resolve("auto", jnp.bfloat16, 64, "tpu") == "splash"
    assert attention.resolve("reference", jnp.float32, 64, "tpu") == "reference"
    with pytest.raises(ValueError, match="attention implementation"):
        attention.resolve("flash", jnp.float32, 64)
    with pytest.raises(ValueError, match="ViTConfig.attention"):
        ViTConfig(attention="flash")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_patch_embedding_matches_the_convolution(dtype):
    p, d = 7, 8
    embed = PatchEmbed(p, d, dtype, nnx.Rngs(0))
    embed.bias[...] = jnp.arange(d, dtype=jnp.float32) / d
    conv = nnx.Conv(1, d, (p, p), strides=(p, p), padding="VALID", dtype=dtype, rngs=nnx.Rngs(1))
    conv.kernel[...], conv.bias[...] = embed.kernel[...], embed.bias[...]
    images = jnp.asarray(np.random.default_rng(2).random((3, 21, 14)), jnp.float32)
    loss = lambda out: jnp.sum(out.astype(jnp.float32) ** 2)
    got, g_embed = nnx.jit(lambda m: (m(images), nnx.grad(lambda m: loss(m(images)))(m)))(embed)
    want, g_conv = nnx.jit(lambda m, x: (m(x), nnx.grad(lambda m: loss(m(x)))(m)))(
        conv, images[..., None].astype(dtype))
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32).reshape(3, 6, d),
                               atol=TOL[dtype] * 4)
    for name in ("kernel", "bias"):
        a, b = (np.asarray(getattr(g, name)[...], np.float32) for g in (g_embed, g_conv))
        np.testing.assert_allclose(a, b, atol=TOL[dtype] * 4 * max(1.0, np.abs(b).max()), err_msg=name)

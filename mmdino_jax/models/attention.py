"""Unmasked multi-head attention `softmax(q k^T / sqrt(d)) v`, one function, one implementation per backend.

`dot_product_attention(q, k, v)` takes and returns (B, T, heads, head_dim) arrays, the layout of
`jax.nn.dot_product_attention`. With `implementation="auto"` the backend picks:

- cpu: `xla_cpu`, a hand-written forward and backward (`jax.custom_vjp`) on a (B, heads, T, d) layout,
  batched over the images: the forward keeps only the log-sum-exp, the backward recomputes the
  probabilities from it (bench/README.md has the measurements against `jax.nn.dot_product_attention`,
  PyTorch's SDPA and the per-image `lax.map` loop this replaced);
- gpu: cuDNN's fused flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`) where it
  applies (bfloat16 / float16, head_dim <= 128 and a multiple of 8), else XLA's;
- tpu: Splash attention (Pallas), imported only there; T is padded to the kernel's 128-token blocks
  and the padded keys are masked out.

Every path computes the logits and the softmax in float32 and returns the input dtype. `reference`
is the plain formula, the one the parity tests compare against. The models never mask attention
(masked tokens are replaced by the mask token), so no path takes a mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "reference", "xla_cpu", "cudnn", "xla", "splash")
_SPLASH_BLOCK = 128


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """Softmax attention probabilities (B, heads, Tq, Tk), float32, for q (B,Tq,H,d) and k (B,Tk,H,d)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits * q.shape[-1] ** -0.5, axis=-1)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The plain formula: probabilities in float32, then `p v` in the input dtype."""
    p = attention_weights(q, k).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v, preferred_element_type=jnp.float32).astype(v.dtype)


def resolve(implementation: str, dtype, head_dim: int, backend: str | None = None) -> str:
    """The implementation `auto` stands for on `backend` (default: JAX's default backend)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "xla_cpu"
    if backend in ("gpu", "cuda", "rocm"):
        cudnn_ok = backend != "rocm" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        return "cudnn" if cudnn_ok and head_dim <= 128 and head_dim % 8 == 0 else "xla"
    if backend == "tpu":
        return "splash"
    return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "auto") -> jax.Array:
    """`softmax(q k^T / sqrt(d)) v` for q, k, v (B, T, heads, d) -> (B, T, heads, d), in q's dtype."""
    impl = resolve(implementation, q.dtype, q.shape[-1])
    if impl == "reference":
        return reference_attention(q, k, v)
    if impl == "xla_cpu":
        to_bhtd = lambda x: jnp.swapaxes(x, 1, 2)
        return to_bhtd(_lse_attention(to_bhtd(q), to_bhtd(k), to_bhtd(v)))
    if impl in ("cudnn", "xla"):
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    return _splash_attention(q, k, v)


# --- xla_cpu: a hand-written VJP on (B, H, T, d) -------------------------------------------------------

def _logits(q, k):
    scale = q.shape[-1] ** -0.5
    return jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale


def _forward(q, k, v):
    """Output and the float32 log-sum-exp (B, H, T, 1) of the logits."""
    s = _logits(q, k)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    o = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
    return o.astype(v.dtype), m + jnp.log(total)


def _backward(q, k, v, o, lse, do):
    """Gradients (dq, dk, dv) from the saved output and log-sum-exp."""
    scale = q.shape[-1] ** -0.5
    f32 = dict(preferred_element_type=jnp.float32)
    p = jnp.exp(_logits(q, k) - lse)
    dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), do, **f32)
    dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, **f32)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (p * (dp - delta)).astype(q.dtype)
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k, **f32) * scale
    dk = jnp.einsum("bhqk,bhqd->bhkd", ds, q, **f32) * scale
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@jax.custom_vjp
def _lse_attention(q, k, v):
    return _forward(q, k, v)[0]


def _lse_attention_fwd(q, k, v):
    o, lse = _forward(q, k, v)
    return o, (q, k, v, o, lse)


def _lse_attention_bwd(residuals, do):
    return _backward(*residuals, do)


_lse_attention.defvjp(_lse_attention_fwd, _lse_attention_bwd)


# --- splash (TPU) --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, tokens: int, padded: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # TPU only: imported here
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    keys_valid = np.broadcast_to(np.arange(padded)[None, :] < tokens, (padded, padded))
    mask = mask_lib.MultiHeadMask([mask_lib.NumpyMask(keys_valid) for _ in range(heads)])
    return kernel_lib.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_attention(q, k, v, interpret: bool = False):
    """Splash attention per image on (H, T, d), T padded up to a multiple of the 128-token block."""
    b, t, h, d = q.shape
    padded = -(-t // _SPLASH_BLOCK) * _SPLASH_BLOCK
    kernel = _splash_kernel(h, t, padded, interpret)

    def prep(x, scale=1.0):
        x = jnp.swapaxes(x * jnp.asarray(scale, x.dtype), 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, padded - t), (0, 0)))

    out = jax.vmap(kernel)(prep(q, d**-0.5), prep(k), prep(v))
    return jnp.swapaxes(out[:, :, :t], 1, 2)

"""The multi-crop augmentation on the accelerator, inside the jitted step (`data.augment_on = device`).

The input pipeline then sends each sample's cached slice (S, H, W) float16 with, per crop, the linear maps of
`augment.multi_crop_operators` (host work: a few random draws and table look-ups per crop, no image arithmetic),
and this module computes the crops as `data/augment.py`'s `view` does on the host: crop + resize + flip as
``rows @ image @ cols^T``, clamp to [0, 1], blur as ``blur @ x @ blur^T``, gamma contrast, then the
normalisation of non-zero pixels and the absent sequences zeroed. The matmuls run at full float32 precision
(no TF32 / bf16 passes), so the crops match the host's to float32 rounding (`tests/test_device_crops.py`),
but for the rare pixel (~1e-6 of them) whose blur tail underflows on one side of float32's smallest normal
number and not on the other: background there, foreground (-mean / std) here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmdino_jax.data.augment import MEAN, STD, TINY
from mmdino_jax.run_checks import AUGMENT_ON

FAMILIES = ("global", "local")
OPERATORS = ("rows", "cols", "blur", "gamma")
_HIGHEST = jax.lax.Precision.HIGHEST


def operator_keys(*families: str) -> tuple[str, ...]:
    """The batch entries of the operators of ``families`` (default: both), besides ``image``: ``global_rows``
    ... ``local_gamma``."""
    return tuple(f"{family}_{name}" for family in families or FAMILIES for name in OPERATORS)


def crops(image: jax.Array, rows: jax.Array, cols: jax.Array, blur: jax.Array, gamma: jax.Array,
          present: jax.Array) -> jax.Array:
    """Augmented crops (B, n, S, size, size) float32 of slices ``image`` (B, S, H, W) from one crop family's
    operators: rows (B, n, size, H), cols (B, n, size, W), blur (B, n, size, size), gamma (B, n) (0: none),
    and ``present`` (B, S)."""
    x = jnp.einsum("bnyh,bshw->bnsyw", rows, image.astype(jnp.float32), precision=_HIGHEST)
    x = jnp.clip(jnp.einsum("bnsyw,bnxw->bnsyx", x, cols, precision=_HIGHEST), 0.0, 1.0)
    x = jnp.einsum("bnyk,bnskx->bnsyx", blur, x, precision=_HIGHEST)
    x = jnp.einsum("bnsyk,bnxk->bnsyx", x, blur, precision=_HIGHEST)
    low = jnp.min(x, axis=(2, 3, 4), keepdims=True)
    span = jnp.max(x, axis=(2, 3, 4), keepdims=True) - low
    g = gamma[:, :, None, None, None]
    contrast = ((x - low) / (span + 1e-7)) ** jnp.where(g > 0, g, 1.0) * span + low
    x = jnp.where(g > 0, contrast, x)
    x = jnp.where(jnp.abs(x) >= TINY, (x - MEAN) / STD, 0.0)
    return x * present[:, None, :, None, None].astype(x.dtype)


def expand_crops(batch: dict) -> dict:
    """A step batch with ``image`` and operators -> the same batch with ``global`` / ``local`` crops
    (B, n, S, size, size) instead (families without operators are left out); other batches unchanged."""
    if "image" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k != "image" and k not in operator_keys()}
    for family in FAMILIES:
        if f"{family}_rows" in batch:
            out[family] = crops(batch["image"], *(batch[f"{family}_{name}"] for name in OPERATORS),
                                batch["present"])
    return out


def on_device(augment_on: str, backend: str | None = None) -> bool:
    """`data.augment_on` resolved: ``device``, ``host``, or ``auto`` (the device on GPU and TPU, whose step
    outruns the host's workers; the host on CPU, where both share the same cores)."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, not {augment_on!r}")
    if augment_on == "auto":
        return (backend or jax.default_backend()) != "cpu"
    return augment_on == "device"

"""Teacher targets (centring, Sinkhorn-Knopp) and the EMA teacher update (DINOv2
`dinov2/loss/dino_clstoken_loss.py`, `dinov2/train/ssl_meta_arch.py`).

Under `jit` with a data-sharded batch every reduction here is global, so no explicit all-reduce is
needed to match DINOv2's distributed statistics.
"""

import jax
import jax.numpy as jnp


def softmax_center(teacher_logits, center, temp):
    """Centred teacher targets softmax((t - c) / temp) over the last axis; center broadcasts (e.g. (K,))."""
    return jax.nn.softmax((teacher_logits - center) / temp, axis=-1)


def update_center(center, teacher_logits, momentum=0.9, mask=None):
    """EMA of the centre: c <- m c + (1 - m) mean(t).

    The mean runs over all leading axes of teacher_logits (...,K), or over the tokens where `mask`
    (teacher_logits.shape[:-1], bool) is True (iBOT: the masked tokens). Returns the centre's shape.
    """
    if mask is None:
        batch_center = jnp.mean(teacher_logits.reshape(-1, teacher_logits.shape[-1]), axis=0)
    else:
        weights = mask[..., None].astype(teacher_logits.dtype)
        total = jnp.sum(teacher_logits * weights, axis=tuple(range(teacher_logits.ndim - 1)))
        batch_center = total / jnp.maximum(jnp.sum(weights), 1.0)
    return momentum * center + (1.0 - momentum) * batch_center.reshape(jnp.shape(center))


def sinkhorn_knopp(teacher_logits, temp, n_iterations=3, mask=None):
    """Sinkhorn-Knopp teacher targets (DINOv2's `sinkhorn_knopp_teacher`) over all tokens of (...,K).

    Q = exp(t / temp) over the B samples (all leading positions, or those where `mask` is True), scaled
    to sum 1; each iteration normalises every prototype's row to 1/K then every sample's column to 1/B;
    finally Q * B, so each sample's targets sum to 1 (float32). Samples outside the mask get zeros.
    The global max is subtracted before exp for float safety; the first normalisation cancels it.
    """
    n_prototypes = teacher_logits.shape[-1]
    t = teacher_logits.reshape(-1, n_prototypes).astype(jnp.float32) / temp
    keep = jnp.ones(t.shape[0], bool) if mask is None else mask.reshape(-1)
    t = jnp.where(keep[:, None], t, -jnp.inf)
    q = jnp.exp(t - jnp.max(t))
    n_samples = jnp.sum(keep)
    q = q / jnp.sum(q)
    for _ in range(n_iterations):
        q = q / jnp.sum(q, axis=0, keepdims=True) / n_prototypes
        column = jnp.where(keep[:, None], jnp.sum(q, axis=1, keepdims=True) * n_samples, 1.0)
        q = jnp.where(keep[:, None], q / column, 0.0)
    return (q * n_samples).reshape(teacher_logits.shape)


def ema_update(teacher_params, student_params, momentum):
    """Teacher EMA on matching pytrees: theta_t <- m theta_t + (1 - m) theta_s."""
    return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher_params, student_params)

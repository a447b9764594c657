"""DINO, iBOT, KoLeo and semi-supervised losses (MM-DINOv2 / DINOv2 `dinov2/loss/*.py`,
`dinov2/train/ssl_meta_arch.py`), pure functions of arrays.

Teacher targets are probabilities (centred softmax or Sinkhorn-Knopp, see `ssl/teacher.py`); student
inputs are head logits, divided by `student_temp` here.
"""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmdino_jax.constants import UNLABELED


def _cross_entropy_sums(teacher_probs, student_log_probs):
    """[i, j] = mean over the batch of -sum_k t_j log s_i, for t (n_t,B,K) and log s (n_s,B,K)."""
    return -jnp.einsum("jbk,ibk->ij", teacher_probs, student_log_probs) / teacher_probs.shape[1]


def dino_loss(student_global, student_local, teacher_probs, student_temp=0.1):
    """DINO CLS loss -> (local_term, global_term), both already divided as in DINOv2.

    student_global (n_g,B,K) and student_local (n_l,B,K) are student head logits; teacher_probs (n_g,B,K)
    are the teacher targets in the SAME crop order as student_global (the caller does not swap).
    local = sum over all (local crop, teacher crop) pairs; global = sum over pairs of different global
    crops (for n_g=2 this is DINOv2's [crop1, crop0] swap, times its loss_scales=2 over the 2B mean).
    Each pair term is the batch mean of the cross-entropy; both terms are divided by
    n_l*n_g + (n_g-1)*n_g (= 18 for 2 global and 8 local crops).
    """
    n_g, n_l = student_global.shape[0], student_local.shape[0]
    n_terms = n_l * n_g + (n_g - 1) * n_g
    global_ce = _cross_entropy_sums(teacher_probs, jax.nn.log_softmax(student_global / student_temp, axis=-1))
    local_ce = _cross_entropy_sums(teacher_probs, jax.nn.log_softmax(student_local / student_temp, axis=-1))
    global_term = (jnp.sum(global_ce) - jnp.trace(global_ce)) / n_terms
    return jnp.sum(local_ce) / n_terms, global_term


def ibot_token_weights(mask):
    """Per-token iBOT weights (M,T) from the target mask (M,T) bool: 1 / (M * the crop's target count).

    DINOv2's masks_weight (1 / n_masked per token) divided by the number of crops (its x2 x 1/2 scales
    cancel). A crop without targets weighs nothing but still counts in M.
    """
    count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)
    return mask / (count * mask.shape[0])


def ibot_loss(student_patch_logits, teacher_probs, weights, student_temp=0.1):
    """iBOT patch loss: the `ibot_token_weights`-weighted sum of the tokens' cross-entropies.

    student_patch_logits, teacher_probs: (...,K); weights (...) for the same tokens: all of them, or only
    the gathered targets (`models.vit.take_rows`). With all tokens this is the mean over the M crops of the
    per-crop mean cross-entropy over the masked tokens.
    """
    ce = -jnp.sum(teacher_probs * jax.nn.log_softmax(student_patch_logits / student_temp, axis=-1), axis=-1)
    return jnp.sum(weights * ce)


def _koleo(x, eps=1e-8):
    """KoLeo of one batch (B,D): -mean log(||x̂ - x̂_nn + eps|| + eps), x̂ = x / max(||x||, eps)."""
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = x @ x.T
    dots = jnp.where(jnp.eye(x.shape[0], dtype=bool), -1.0, dots)
    neighbour = x[jnp.argmax(dots, axis=1)]
    distance = jnp.linalg.norm(x - neighbour + eps, axis=-1)
    return -jnp.mean(jnp.log(distance + eps))


def koleo_loss(x):
    """KoLeo regulariser of x (...,B,D) -> (...): one value per batch over the leading axes.

    Nearest neighbours are found by dot product of the L2-normalised rows, excluding the row itself
    (DINOv2 fills the diagonal with -1).
    """
    return jnp.vectorize(_koleo, signature="(b,d)->()")(x)


def koleo_loss_sharded(x, mesh: Mesh, axis: str = "data"):
    """KoLeo on each device's local batch, averaged over devices (as DINOv2 computes it per GPU).

    x (...,B,D) has its batch axis -2 split over `axis` (a mesh axis name or a tuple of names);
    returns (...) replicated. Call it inside jit with x sharded that way.
    """
    spec = P(*([None] * (x.ndim - 2)), axis, None)
    local = lambda shard: jax.lax.pmean(koleo_loss(shard), axis)
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=P())(x)


def _class_weights(onehot, labeled, weighting, class_weights):
    """(K,) class weights: per-batch log inverse frequency, given dataset weights, or ones."""
    if weighting == "batch":
        n_labeled = jnp.sum(labeled)
        counts = jnp.sum(onehot * labeled[:, None], axis=0)
        return jnp.where(n_labeled > 0, jnp.log(n_labeled / (counts + 1e-6)), 0.0)
    if weighting == "dataset":
        if class_weights is None:
            raise ValueError("semi_supervised_loss: weighting='dataset' needs class_weights (K,)")
        return jnp.asarray(class_weights, onehot.dtype)
    if weighting == "none":
        return jnp.ones(onehot.shape[-1], onehot.dtype)
    raise ValueError(f"semi_supervised_loss: weighting must be batch, dataset or none, got {weighting!r}")


def semi_supervised_loss(
    logits, labels, temperature=0.1, label_smoothing=0.1, class_weights=None, weighting="batch"
):
    """Weighted, label-smoothed cross-entropy on labeled samples (MM-DINOv2's semi-supervised loss).

    logits (C,B,K): student head outputs for C crop chunks; labels (B,) int, -1 = unlabeled.
    weighting: "batch" = w_c = log(N_lab / (n_c + 1e-6)) from the labeled batch (the reference),
    "dataset" = the given class_weights (K,), "none" = 1. Per chunk, PyTorch's
    cross_entropy(logits / T, one-hot, weight=w, label_smoothing) with probability targets
    (y' = (1-eps) y + eps/K, loss_n = -sum_c w_c y'_c log p_c, averaged over N_lab); then the mean over
    chunks times N_lab / B. Returns 0 when no sample is labeled.
    """
    n_classes = logits.shape[-1]
    labeled = labels != UNLABELED
    onehot = jax.nn.one_hot(jnp.where(labeled, labels, 0), n_classes, dtype=logits.dtype)
    weights = _class_weights(onehot, labeled, weighting, class_weights)
    targets = (1.0 - label_smoothing) * onehot + label_smoothing / n_classes
    per_sample = -jnp.sum(weights * targets * jax.nn.log_softmax(logits / temperature, axis=-1), axis=-1)
    n_labeled = jnp.sum(labeled)
    per_chunk = jnp.sum(jnp.where(labeled, per_sample, 0.0), axis=-1) / jnp.maximum(n_labeled, 1)
    return jnp.mean(per_chunk) * n_labeled / labels.shape[0]

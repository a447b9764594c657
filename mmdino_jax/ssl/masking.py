"""Student input masks, drawn in-graph from `jax.random` keys with static shapes.

Three sources are combined (MM-DINOv2 `dinov2/data/collate.py`, `dinov2/data/masking.py`): iBOT block
masks on the patch grid (DINOv2's `MaskingGenerator` and collate rules), whole-sequence masks (MM-DINOv2's
full-modality masking) and absent sequences, which are always masked and are never iBOT targets.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _block_mask(key, target, grid, min_num_patches, max_num_patches, log_aspect, max_tries):
    """One crop's block mask with at most `target` patches, following DINOv2's MaskingGenerator.

    Each round tries up to `max_tries` random rectangles (area ~ U(min_num_patches, remaining),
    log-aspect ~ U(log_aspect)) and keeps the first one with h < grid_h, w < grid_w that adds between
    1 and `remaining` new patches; rounds stop when the target is reached or a round adds nothing.
    """
    height, width = grid
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]

    def try_block(i, carry):
        mask, added, key, remaining = carry
        key, k_area, k_aspect, k_top, k_left = jax.random.split(key, 5)
        area = min_num_patches + (remaining - min_num_patches) * jax.random.uniform(k_area)
        aspect = jnp.exp(jax.random.uniform(k_aspect, minval=log_aspect[0], maxval=log_aspect[1]))
        h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        top = jnp.floor(jax.random.uniform(k_top) * (height - h + 1)).astype(jnp.int32)
        left = jnp.floor(jax.random.uniform(k_left) * (width - w + 1)).astype(jnp.int32)
        block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        new = jnp.sum(block & ~mask)
        accept = (added == 0) & (h < height) & (w < width) & (new > 0) & (new <= remaining)
        return jnp.where(accept, mask | block, mask), jnp.where(accept, new, added), key, remaining

    def round_(carry):
        mask, count, key, _ = carry
        key, sub = jax.random.split(key)
        remaining = jnp.minimum(target - count, max_num_patches)
        mask, added, _, _ = jax.lax.fori_loop(0, max_tries, try_block, (mask, jnp.int32(0), sub, remaining))
        return mask, count + added, key, added == 0

    def keep_going(carry):
        _, count, _, stalled = carry
        return (count < target) & ~stalled

    init = (jnp.zeros(grid, bool), jnp.int32(0), key, jnp.bool_(False))
    mask, _, _, _ = jax.lax.while_loop(keep_going, round_, init)
    return mask.reshape(-1)


def ibot_block_masks(
    key: jax.Array,
    n_crops: int,
    grid: tuple[int, int] = (7, 7),
    mask_sample_prob: float = 0.5,
    ratio_min_max: tuple[float, float] = (0.1, 0.5),
    min_num_patches: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 10,
    max_num_patches: int | None = None,
) -> jax.Array:
    """iBOT block masks for `n_crops` global crops -> (n_crops, grid_h*grid_w) bool.

    `int(n_crops * mask_sample_prob)` crops get a mask; crop i of them targets
    `int(N * U(r[i], r[i+1]))` patches with `r = linspace(*ratio_min_max, n_masked + 1)`; the others are
    empty; the crops are then shuffled. `max_num_patches` caps a single block (default N // 2, i.e. 24
    on the 7x7 grid as in the recipe).
    """
    n_patches = grid[0] * grid[1]
    max_num_patches = n_patches // 2 if max_num_patches is None else max_num_patches
    n_masked = int(n_crops * mask_sample_prob)
    k_target, k_perm, k_blocks = jax.random.split(key, 3)
    ratios = jnp.linspace(ratio_min_max[0], ratio_min_max[1], n_masked + 1)
    fraction = jax.random.uniform(k_target, (n_masked,), minval=ratios[:-1], maxval=ratios[1:])
    targets = jnp.concatenate(
        [jnp.floor(n_patches * fraction).astype(jnp.int32), jnp.zeros(n_crops - n_masked, jnp.int32)]
    )
    targets = jax.random.permutation(k_perm, targets)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    one_crop = lambda k, t: _block_mask(k, t, grid, min_num_patches, max_num_patches, log_aspect, max_tries)
    return jax.vmap(one_crop)(jax.random.split(k_blocks, n_crops), targets)


def modality_masks(key: jax.Array, present: jax.Array, n_masked: int = 1) -> jax.Array:
    """Whole-sequence masks (n_crops, S) bool: absent sequences plus `n_masked` present ones per crop.

    The masked sequences are drawn uniformly among the crop's present sequences. At least one present
    sequence always stays visible: a crop with k <= n_masked present sequences gets k - 1 of them masked
    (none when it has a single sequence).
    """
    n_drop = jnp.clip(jnp.sum(present, axis=-1) - 1, 0, n_masked)
    scores = jnp.where(present, jax.random.uniform(key, present.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return (present & (rank < n_drop[:, None])) | ~present


def student_masks(
    key: jax.Array,
    present: jax.Array,
    grid: tuple[int, int] = (7, 7),
    n_masked_sequences: int = 1,
    **block_kwargs,
) -> tuple[jax.Array, jax.Array]:
    """Masks of the student's global crops and the iBOT targets, both (n_crops, S, grid_h*grid_w) bool.

    `present` (n_crops, S) bool tells which sequences each crop has (crop-major, i.e. the batch's
    `present` tiled over the global crops). mask = block mask repeated over sequences OR whole-sequence
    mask OR absent sequence; targets = mask AND present (absent tokens are never iBOT targets).
    `block_kwargs` go to `ibot_block_masks`.
    """
    k_block, k_seq = jax.random.split(key)
    blocks = ibot_block_masks(k_block, present.shape[0], grid, **block_kwargs)
    sequences = modality_masks(k_seq, present, n_masked_sequences)
    mask = blocks[:, None, :] | sequences[:, :, None]
    return mask, mask & present[:, :, None]


def target_bound(
    n_crops: int,
    group: int,
    n_sequences: int,
    n_patches: int,
    n_masked_sequences: int = 1,
    mask_sample_prob: float = 0.5,
    ratio_min_max: tuple[float, float] = (0.1, 0.5),
) -> int:
    """Most iBOT targets that `group` consecutive crops of an `n_crops` batch can hold under `student_masks`.

    A crop holds at most its whole-sequence masks plus its block mask on every other sequence; the
    `ibot_block_masks` targets are permuted over the batch, so the worst group gets the largest ones.
    DINOv2 gathers the masked tokens up to a similar bound (its collate's `upperbound`).
    """
    n_masked = int(n_crops * mask_sample_prob)
    upper = np.linspace(ratio_min_max[0], ratio_min_max[1], n_masked + 1)[1:]
    blocks = sorted((min(n_patches, math.ceil(n_patches * r)) for r in upper), reverse=True)
    blocks = (blocks + [0] * n_crops)[:group]
    m = min(n_masked_sequences, n_sequences - 1)
    return max(1, sum(min(n_sequences * n_patches, m * n_patches + (n_sequences - m) * b) for b in blocks))


def target_rows(targets: jax.Array, groups: int, bound: int) -> tuple[jax.Array, jax.Array]:
    """Where the iBOT targets (M, T) bool are: per group of M / groups consecutive crops, the indices of
    its targets in the group's (M / groups * T) flattened tokens, padded to `bound` -> rows, valid
    (groups, bound). Groups follow the batch's split over devices, so the gather stays on each device.
    """
    flat = targets.reshape(groups, -1)
    rows = jax.vmap(lambda t: jnp.nonzero(t, size=bound, fill_value=0)[0])(flat)
    return rows, jnp.arange(bound) < jnp.sum(flat, axis=1, keepdims=True)

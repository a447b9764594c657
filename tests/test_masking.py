"""Masks against a loop-based numpy re-implementation of DINOv2's MaskingGenerator and collate rules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdino_jax.models.vit import take_rows
from mmdino_jax.ssl import masking

GRID = (7, 7)
N = 49
N_CROPS = 128
DRAWS = 12


def _reference_generator(rng, target, min_patches=4, max_patches=24, aspect=(0.3, 1 / 0.3), tries=10):
    """DINOv2's MaskingGenerator.__call__(target) for a 7x7 grid, with numpy's RNG."""
    mask = np.zeros(GRID, bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < target:
        remaining = min(target - count, max_patches)
        delta = 0
        for _ in range(tries):
            area = min_patches + (remaining - min_patches) * rng.random()  # Python's random.uniform
            ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * ratio)))
            w = int(round(math.sqrt(area / ratio)))
            if w < GRID[1] and h < GRID[0]:
                top = rng.integers(0, GRID[0] - h + 1)
                left = rng.integers(0, GRID[1] - w + 1)
                already = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - already <= remaining:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i, j]:
                                mask[i, j] = True
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask.reshape(-1)


def _reference_collate(rng, n_crops=N_CROPS, prob=0.5, ratios=(0.1, 0.5)):
    """The collate's per-crop targets, masks and shuffle."""
    n_masked = int(n_crops * prob)
    probs = np.linspace(*ratios, n_masked + 1)
    masks = [_reference_generator(rng, int(N * rng.uniform(probs[i], probs[i + 1]))) for i in range(n_masked)]
    masks += [np.zeros(N, bool)] * (n_crops - n_masked)
    rng.shuffle(masks)
    return np.stack(masks)


def _stats(masks):
    counts = masks.sum(-1)
    grids = masks.reshape(-1, *GRID)
    return counts, grids.any(-1).sum(-1) + grids.any(-2).sum(-1)


@pytest.fixture(scope="module")
def draws():
    fn = jax.jit(masking.ibot_block_masks, static_argnums=1)
    ours = np.stack([np.asarray(fn(k, N_CROPS)) for k in jax.random.split(jax.random.key(0), DRAWS)])
    rng = np.random.default_rng(0)
    ref = np.stack([_reference_collate(rng) for _ in range(DRAWS)])
    return ours, ref


def test_block_mask_bounds(draws):
    ours, _ = draws
    assert ours.shape == (DRAWS, N_CROPS, N) and ours.dtype == bool
    probs = np.linspace(0.1, 0.5, N_CROPS // 2 + 1)
    for masks in ours:
        counts = np.sort(masks.sum(-1))[::-1]
        assert np.count_nonzero(counts) <= N_CROPS // 2
        # the k-th largest count is at most the k-th largest stratum's target bound
        bounds = np.floor(N * probs[1:][::-1]).astype(int)
        assert np.all(counts[: N_CROPS // 2] <= bounds)
        assert np.all(counts[N_CROPS // 2 :] == 0)


def test_block_mask_statistics_match_reference(draws):
    ours, ref = draws
    (c_ours, r_ours), (c_ref, r_ref) = _stats(ours.reshape(-1, N)), _stats(ref.reshape(-1, N))
    assert abs(np.mean(c_ours > 0) - np.mean(c_ref > 0)) < 0.02
    masked_ours, masked_ref = c_ours[c_ours > 0], c_ref[c_ref > 0]
    assert abs(masked_ours.mean() - masked_ref.mean()) < 0.05 * masked_ref.mean()
    # rows + columns touched: a shape statistic of the rectangles
    assert abs(r_ours[c_ours > 0].mean() - r_ref[c_ref > 0].mean()) < 0.3
    hist_ours = np.bincount(masked_ours, minlength=25) / masked_ours.size
    hist_ref = np.bincount(masked_ref, minlength=25) / masked_ref.size
    assert 0.5 * np.abs(hist_ours - hist_ref).sum() < 0.15


def test_modality_masks_rules():
    rng = np.random.default_rng(1)
    present = jnp.asarray(rng.random((4000, 4)) < 0.7)
    for n_masked in (1, 2):
        masked = np.asarray(masking.modality_masks(jax.random.key(n_masked), present, n_masked))
        pres = np.asarray(present)
        assert masked[~pres].all()
        expected = np.clip(pres.sum(-1) - 1, 0, n_masked)
        np.testing.assert_array_equal((masked & pres).sum(-1), expected)
        # uniform among present sequences: each of 4 present is picked with probability n_masked/4
        full = pres.all(-1)
        assert np.allclose(masked[full].mean(0), n_masked / 4, atol=0.05)


def test_student_masks_combine_sources():
    present = jnp.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0]] * 4, bool)
    fn = jax.jit(masking.student_masks, static_argnames=("grid", "mask_sample_prob"))
    mask, target = fn(jax.random.key(5), present, grid=GRID, mask_sample_prob=1.0)
    mask, target, pres = np.asarray(mask), np.asarray(target), np.asarray(present)
    assert mask.shape == target.shape == (16, 4, N)
    np.testing.assert_array_equal(target, mask & pres[:, :, None])
    for crop_mask, crop_present in zip(mask, pres):
        assert crop_mask[~crop_present].all()
        full = crop_mask.all(-1) & crop_present
        assert full.sum() == min(1, crop_present.sum() - 1)
        visible = crop_mask[crop_present & ~full]
        assert (visible == visible[0]).all() and visible[0].sum() < N


def test_target_bound_holds_for_every_group_of_crops():
    """The static bound the step gathers iBOT targets up to is never exceeded, and is nearly reached."""
    crops, sequences = 16, 4
    fn = jax.jit(jax.vmap(lambda k: masking.student_masks(k, jnp.ones((crops, sequences), bool), grid=GRID)[1]))
    targets = np.asarray(fn(jax.random.split(jax.random.key(0), 300))).reshape(300, crops, -1)
    for group in (crops, 4, 1):
        bound = masking.target_bound(crops, group, sequences, N)
        counts = targets.reshape(300, crops // group, -1).sum(-1)
        assert counts.max() <= bound, (group, counts.max(), bound)
        assert counts.max() >= 0.9 * bound, (group, counts.max(), bound)
    assert masking.target_bound(crops, crops, sequences, N) < 0.4 * crops * sequences * N


def test_target_rows_gather_each_groups_targets():
    targets = jnp.asarray(np.random.default_rng(2).random((6, 10)) < 0.3)
    rows, valid = masking.target_rows(targets, 3, 9)
    values = jnp.arange(60.0).reshape(6, 10)
    gathered = np.asarray(take_rows(values, rows))
    for g in range(3):
        expected = np.asarray(values[2 * g:2 * g + 2])[np.asarray(targets[2 * g:2 * g + 2])]
        np.testing.assert_array_equal(gathered[g][np.asarray(valid[g])], expected)
        assert valid[g].sum() == len(expected)

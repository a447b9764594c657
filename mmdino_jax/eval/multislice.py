"""Subject-level prediction over many slices: the K largest tumour slices of each axis, aggregated.

A subject's prediction is the mean of the probe's probabilities over its slices ("probs"), or the probe
applied to the mean of their CLS features ("features"). The probe is the evaluation's single-slice probe
(fit on each train subject's largest axial slice), so the two rows compare like with like.
"""

from __future__ import annotations

import numpy as np

from mmdino_jax.constants import sequence_indices
from mmdino_jax.data.augment import eval_view
from mmdino_jax.data.pipeline import AXIAL, CachedSplit
from mmdino_jax.data.prepare import DEFAULT_SPACING, crop_slice

AGGREGATES = ("probs", "features")
AXES = (AXIAL, *(a for a in range(3) if a != AXIAL))  # axial first: a subject's first slice is its largest axial


def top_slices(counts, k: int) -> np.ndarray:
    """Positions of the k largest non-zero `counts` (ties: the earlier position), largest first."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")[:k]
    return order[counts[order] > 0]


def cached_rows(data: CachedSplit, subject: int, k: int) -> np.ndarray:
    """Cache rows of the subject's k largest tumour slices of each axis (axes in AXES order)."""
    rows = np.arange(data.offsets[subject], data.offsets[subject + 1])
    return np.concatenate([rows[data.axis[rows] == a][top_slices(data.counts[rows][data.axis[rows] == a], k)]
                           for a in AXES])


def crop_largest_slices(volumes: np.ndarray, seg: np.ndarray, k: int, voxel_mm=(1.0, 1.0, 1.0),
                        spacing: float = DEFAULT_SPACING) -> np.ndarray:
    """(M, 4, 96, 96) float32 crops of the k largest tumour slices of each axis (AXES order) of a volume with
    voxel size `voxel_mm`, at `spacing` mm, exactly as the cache holds them."""
    crops = []
    for axis in AXES:
        planes, images = np.moveaxis(seg, axis, 0), np.moveaxis(volumes, axis + 1, 1)
        counts = np.count_nonzero(planes.reshape(len(planes), -1), axis=1)
        in_plane = tuple(v for a, v in enumerate(voxel_mm) if a != axis)
        crops += [crop_slice(images[:, i], planes[i], in_plane, spacing)[0] for i in top_slices(counts, k)]
    return np.stack(crops).astype(np.float16).astype(np.float32)


def aggregate(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean of `values` rows per owner 0..n-1."""
    sums = np.zeros((n, *values.shape[1:]))
    np.add.at(sums, owner, values)
    return sums / np.bincount(owner, minlength=n).reshape(-1, *([1] * (values.ndim - 1)))


def split_views(cache, split: str, sequences, size: int, k: int, labeled_only: bool = True):
    """(images (M, S, size, size), present (M, S), owner (M,), labels (n,)) of the split's subjects' slices."""
    data = CachedSplit(cache, split)
    seq = np.asarray(sequence_indices(sequences))
    subjects = np.flatnonzero(data.labels >= 0) if labeled_only else np.arange(len(data))
    rows = [cached_rows(data, s, k) for s in subjects]
    owner = np.repeat(np.arange(len(subjects)), [len(r) for r in rows])
    present = data.present[subjects][:, seq][owner]
    images = np.stack([eval_view(data.slice(r)[0][seq], p, size) for r, p in zip(np.concatenate(rows), present)])
    return images, present, owner, data.labels[subjects]


def subject_probs(probe, feats: np.ndarray, owner: np.ndarray, n: int, how: str, num_classes: int) -> np.ndarray:
    """Per-subject probabilities (n, num_classes) from per-slice features by the aggregate `how`."""
    if how == "probs":
        return aggregate(probe.predict_proba(feats, num_classes), owner, n)
    if how == "features":
        return probe.predict_proba(aggregate(feats, owner, n), num_classes)
    raise ValueError(f"unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}")

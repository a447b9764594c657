"""The radiomics baseline's features: IBSI first-order and texture features (mirp) plus 2D shape features
(scikit-image) per sequence, inside the tumour mask of each subject's evaluation slice (the largest axial tumour
slice of the prepared cache, the slice the backbones are probed on).

Texture and first-order: mirp's "statistics", "intensity_histogram", "glcm", "glrlm" and "glszm" families, in 2D
(by_slice), intensities discretised into 16 bins within the mask. Shape: the region's area, perimeter,
eccentricity, solidity, extent and axis lengths (mirp's morphology family is 3D, mesh based, and took ~9 s per
slice here against ~0.2 s for the five families above). A sequence absent from a subject has no features (NaN).
"""

from __future__ import annotations

import logging
import os
import warnings
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmdino_jax.constants import sequence_indices
from mmdino_jax.data.pipeline import CachedSplit

FAMILIES = ("statistics", "intensity_histogram", "glcm", "glrlm", "glszm")
PREFIXES = ("stat_", "ih_", "cm_", "rlm_", "szm_")
SHAPE = ("area", "perimeter", "eccentricity", "solidity", "extent", "axis_major_length", "axis_minor_length")
BINS = 16


def slice_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Feature vector of one 2D image inside `mask` (shape first, then mirp's features in column order)."""
    from mirp import extract_features
    from skimage.measure import regionprops

    region = regionprops(mask.astype(np.uint8))[0]
    shape = [float(getattr(region, name)) for name in SHAPE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = extract_features(image=image[None].astype(np.float32), mask=mask[None], image_modality="mr",
                                 by_slice=True, base_feature_families=list(FAMILIES),
                                 base_discretisation_method="fixed_bin_number", base_discretisation_n_bins=BINS,
                                 image_voxel_spacing=(1.0, 1.0, 1.0))[0]
    columns = [c for c in table.columns if c.startswith(PREFIXES)]
    return np.concatenate([shape, table[columns].to_numpy(np.float64)[0]])


def _subject(task) -> tuple[str, int, np.ndarray | None]:
    """(split, subject, features (S, F) or None when the subject has no usable sequence)."""
    cache, split, subject, seq = task
    data = CachedSplit(cache, split)
    images, mask = data.slice(data.largest_axial(subject))
    present = data.present[subject, list(seq)]
    if not mask.any() or not present.any():
        return split, subject, None
    rows = [slice_features(images[s], mask) if p else None for s, p in zip(seq, present)]
    width = len(next(r for r in rows if r is not None))
    return split, subject, np.stack([np.full(width, np.nan) if r is None else r for r in rows])


def _quiet() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("mirp", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def compute_features(cache, sequences, path, workers: int = 0) -> Path:
    """Write `path` (npz: per split an (N, S, F) float array, NaN = no feature) once; returns it."""
    path = Path(path)
    if path.is_file():
        return path
    seq = sequence_indices(sequences)
    splits = [s for s in ("train", "val", "test") if (Path(cache) / s / "index.json").is_file()]
    tasks = [(str(cache), split, i, seq) for split in splits for i in range(len(CachedSplit(cache, split)))]
    workers = workers or len(os.sched_getaffinity(0))
    progress = tqdm(total=len(tasks), desc="radiomics features", unit="subject")
    with get_context("spawn").Pool(workers, initializer=_quiet) as pool:
        results = []
        for result in pool.imap_unordered(_subject, tasks, chunksize=4):
            results.append(result)
            progress.update()
    progress.close()
    width = next(f.shape[1] for _, _, f in results if f is not None)
    out = {split: np.full((len(CachedSplit(cache, split)), len(seq), width), np.nan) for split in splits}
    for split, subject, feats in results:
        if feats is not None:
            out[split][subject] = feats
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **out)
    os.replace(tmp, path)
    return path


def imputed(features: np.ndarray, present: np.ndarray, train_mean: np.ndarray) -> np.ndarray:
    """(N, S * F) probe input: the features of sequences absent (or removed, `present` False) and undefined
    features (NaN) replaced by the train subjects' mean of that sequence's feature."""
    x = np.where(present[..., None] & np.isfinite(features), features, train_mean[None])
    return x.reshape(len(x), -1)


def train_means(features: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(S, F) mean of each sequence's features over the train subjects that have it (0 where none has)."""
    valid = present[..., None] & np.isfinite(features)
    total = np.where(valid, features, 0.0).sum(0)
    return total / np.maximum(valid.sum(0), 1)

"""The one rule for blank inputs, shared by prepare, evaluate and predict.

A sequence whose voxels are all non-finite, or constant inside the brain (the voxels where any sequence of
the subject has signal), carries no image: it counts as missing, is masked like a sequence the subject
lacks, and gets a note. A subject with no usable sequence left cannot be used.
"""

from __future__ import annotations

import numpy as np

from mmdino_jax.constants import SEQUENCES


def blank_sequences(volumes: np.ndarray, loaded, finite: np.ndarray) -> list[str]:
    """Names of the loaded sequences of ``volumes`` (S, ...) that are blank.

    ``loaded`` (S,) marks the sequences read from a file; ``finite`` (S,) counts each one's finite voxels
    before non-finite ones were zeroed. A sequence with no finite voxel is blank, as is one constant over
    the brain (its voxels where any loaded sequence is non-zero; an all-zero subject has an empty brain).
    """
    loaded = np.asarray(loaded, bool)
    brain = (volumes[loaded] != 0).any(axis=0) if loaded.any() else np.zeros(volumes.shape[1:], bool)
    blank = []
    for i in np.flatnonzero(loaded):
        inside = volumes[i][brain]
        if finite[i] == 0 or inside.size == 0 or inside.min() == inside.max():
            blank.append(SEQUENCES[i])
    return blank


def blank_note(names: list[str]) -> str:
    return (f"{','.join(names)} blank (all voxels non-finite or constant inside the brain): treated as missing"
            if names else "")


def constant_views(images: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(N, S) bool: present sequences whose 2-D view (N, S, H, W) is constant, i.e. blank in a prepared cache
    written before the rule existed (the caller masks them)."""
    flat = images.reshape(*images.shape[:2], -1)
    return np.asarray(present, bool) & (flat.max(axis=-1) == flat.min(axis=-1))

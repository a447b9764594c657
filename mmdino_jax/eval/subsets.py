"""Sequence subsets for the missing-modality sweep, as per-sample "keep" flags (masked = not keep).

`present` (N, S) marks which of the run's S input sequences exist for each sample; its columns follow
`sequences` (any order). A kept sequence is present and selected; a row may end up with nothing kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np

from mmdino_jax.constants import SEQUENCES, sequence_indices

RANDOM = "random"  # sweep entry name for `random_drop`


def subset_name(subset: Sequence[str]) -> str:
    """("t1", "t1c") -> "t1+t1c"."""
    return "+".join(subset)


def all_subsets(sequences: Sequence[str] = SEQUENCES) -> list[tuple[str, ...]]:
    """Every non-empty subset (2^S - 1), by size then canonical sequence order: (t1,), (t1c,), ..., (t1, t1c), ..."""
    canonical = tuple(SEQUENCES[i] for i in sorted(sequence_indices(sequences)))
    return [c for r in range(1, len(canonical) + 1) for c in combinations(canonical, r)]


def _check_present(present, num_sequences: int | None = None) -> np.ndarray:
    present = np.asarray(present)
    width = present.shape[-1] if num_sequences is None and present.ndim else num_sequences
    if present.dtype != bool or present.ndim != 2 or present.shape[1] != width:
        raise ValueError(f"present must be a bool (N, {width}) array, got {present.dtype} {present.shape}")
    return present


def subset_masks(present, sequences: Sequence[str], subset: Sequence[str]) -> np.ndarray:
    """Keep flags (N, S): sequence j is kept where it is in `subset` and present."""
    present = _check_present(present, len(sequences))
    unknown = set(subset) - set(sequences)
    if unknown or not subset:
        raise ValueError(
            f"subset {tuple(subset)} must be a non-empty selection of the run's sequences {tuple(sequences)}"
        )
    return present & np.isin(np.asarray(sequences), list(subset))[None, :]


def random_drop(present, seed: int) -> np.ndarray:
    """Keep flags (N, S): each sample with >= 2 present sequences loses one of them, chosen uniformly
    (seeded); a sample with a single present sequence keeps it."""
    present = _check_present(present)
    scores = np.random.default_rng(seed).random(present.shape)
    drop = np.where(present, scores, -1.0).argmax(axis=1)
    keep = present.copy()
    rows = np.flatnonzero(present.sum(axis=1) >= 2)
    keep[rows, drop[rows]] = False
    return keep


def sweep_cases(sequences: Sequence[str], seed: int) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """(name, present -> keep flags) for every subset of `sequences`, then the seeded random drop."""
    cases = [(subset_name(s), lambda p, s=s: subset_masks(p, sequences, s)) for s in all_subsets(sequences)]
    return [*cases, (RANDOM, lambda p: random_drop(p, seed))]

"""Weighted k-nearest-neighbour classification of frozen features (DINO's kNN protocol).

Features are L2-normalised; a test sample's k most cosine-similar train samples vote for their class
with weight exp(similarity / T) (DINO: T = 0.07). The class scores, normalised to sum to one, are the
probabilities the metrics read (argmax = the DINO prediction).
"""

from __future__ import annotations

import numpy as np

from mmdino_jax.eval import metrics as metrics_lib


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_probs(train_x, train_y, test_x, k: int, temperature: float, num_classes: int) -> np.ndarray:
    """Class probabilities (N_test, num_classes) from the temperature-weighted votes of the k nearest."""
    train_x, test_x, train_y = l2_normalise(train_x), l2_normalise(test_x), np.asarray(train_y, np.int64)
    if not 1 <= k or len(train_y) != len(train_x) or train_y.min() < 0:
        raise ValueError(f"kNN needs k >= 1 and a labeled bank; got k={k}, {len(train_x)} features, "
                         f"{len(train_y)} labels (min {train_y.min()})")
    k = min(k, len(train_x))
    sim = test_x @ train_x.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.zeros((len(test_x), num_classes))
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[top]), weights)
    return votes / votes.sum(axis=1, keepdims=True)


def knn_protocol(bank: tuple[np.ndarray, np.ndarray], queries: dict, ks, temperature: float,
                 num_classes: int, n_boot: int = 0, seed: int = 0) -> dict:
    """{f"k{k}": {split: metrics}} for a labeled `bank` (features, labels) and `queries` split -> (x, y)."""
    return {f"k{k}": {name: metrics_lib.metrics_with_ci(y, knn_probs(*bank, x, k, temperature, num_classes),
                                                        n_boot, seed)
                      for name, (x, y) in queries.items()} for k in ks}

"""Few-shot linear probing: the probe fit on n labeled train subjects per class, over seeded random draws.

With a handful of samples there is nothing to hold out for choosing C, so every draw is fit with one
fixed C (config `eval.fewshot_c`). A shot count larger than the smallest class of the train set is
skipped and recorded as such.
"""

from __future__ import annotations

import numpy as np

from mmdino_jax.eval import metrics as metrics_lib
from mmdino_jax.eval.probe import fit_fixed_c


def stratified_draws(labels, shots: int, n_draws: int, seed: int) -> list[np.ndarray]:
    """`n_draws` sorted index arrays, each `shots` distinct samples of every class in `labels` (>= 0)."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    members = [np.flatnonzero(labels == c) for c in classes]
    smallest = min(len(m) for m in members)
    if shots > smallest:
        raise ValueError(f"{shots} shots per class, but the smallest class has {smallest} labeled subjects")
    rng = np.random.default_rng([seed, shots])
    return [np.sort(np.concatenate([rng.choice(m, shots, replace=False) for m in members])) for _ in range(n_draws)]


def fewshot_protocol(bank: tuple[np.ndarray, np.ndarray], queries: dict, shots, n_draws: int, c: float,
                     num_classes: int, seed: int = 0) -> dict:
    """{"c", "draws", "shots": {n: {split: {mean, sd, mcc (per draw)}} or {"skipped": reason}}}."""
    x, y = bank
    out = {"c": c, "draws": n_draws, "shots": {}}
    for n in shots:
        try:
            draws = stratified_draws(y, n, n_draws, seed)
        except ValueError as err:
            out["shots"][str(n)] = {"skipped": str(err)}
            continue
        probes = [fit_fixed_c(x[d], y[d], c) for d in draws]
        result = {}
        for name, (qx, qy) in queries.items():
            mccs = [metrics_lib.SCALAR_METRICS["mcc"](qy, p.predict_proba(qx, num_classes)) for p in probes]
            result[name] = {"mean": float(np.mean(mccs)), "sd": float(np.std(mccs, ddof=1)) if len(mccs) > 1
                            else 0.0, "mcc": [float(m) for m in mccs]}
        out["shots"][str(n)] = result
    return out


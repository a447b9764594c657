"""Classification metrics of predicted class probabilities, and bootstrap confidence intervals.

Inputs are integer labels (N,) in [0, K) and probabilities (N, K) whose column k belongs to class k.
Outputs are plain Python numbers, lists and dicts (JSON-serialisable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from mmdino_jax.constants import CLASS_NAMES


def check_predictions(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels (N,) int64 and probabilities (N, K) float64; ValueError on bad input."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.ndim != 2:
        raise ValueError(f"expected labels (N,) and probs (N, K); got shapes {labels.shape} and {probs.shape}")
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} rows of probabilities")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate (empty split)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1]}) (drop unlabeled samples, -1); "
            f"got {labels.min()}..{labels.max()}"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or inf")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the split has a single class ({labels[0]}); the metrics need at least two")
    return labels.astype(np.int64), probs


def _mcc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K, the value of sklearn's `matthews_corrcoef`, 0 where it is undefined) from
    the confusion counts: the bootstraps call it thousands of times, and sklearn's input validation dominates."""
    k = probs.shape[1]
    confusion = np.bincount(labels * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k).astype(np.float64)
    true, pred, n = confusion.sum(axis=1), confusion.sum(axis=0), confusion.sum()
    denominator = np.sqrt((n * n - pred @ pred) * (n * n - true @ true))
    return float((np.trace(confusion) * n - pred @ true) / denominator) if denominator > 0 else 0.0


def _macro_topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Mean over the classes present in `labels` of the recall where a hit is the label among the top k."""
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    hit = (topk == labels[:, None]).any(axis=1)
    return float(np.mean([hit[labels == c].mean() for c in np.unique(labels)]))


def _per_class_auc(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest AUC per class; None for a class absent from `labels` (its AUC is undefined)."""
    return [
        float(roc_auc_score(labels == c, probs[:, c])) if np.any(labels == c) else None
        for c in range(probs.shape[1])
    ]


def _macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean([a for a in _per_class_auc(labels, probs) if a is not None]))


def _per_class_f1(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return f1_score(labels, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average=None, zero_division=0)


# Scalar metrics by name: the keys of `classification_metrics` that `bootstrap_ci` can resample.
SCALAR_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mcc": _mcc,
    "acc_top1": lambda y, p: _macro_topk_accuracy(y, p, 1),
    "acc_top2": lambda y, p: _macro_topk_accuracy(y, p, 2),
    "auc_macro": _macro_auc,
    "f1_mean": lambda y, p: float(_per_class_f1(y, p).mean()),
}


def class_names_for(num_classes: int, class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """`class_names` (default constants.CLASS_NAMES), checked to have one name per class."""
    names = tuple(CLASS_NAMES if class_names is None else class_names)
    if len(names) != num_classes:
        raise ValueError(f"{num_classes} probability columns but {len(names)} class names {names}")
    return names


def classification_metrics(labels, probs, class_names: Sequence[str] | None = None) -> dict:
    """All metrics of one split.

    Keys: n; mcc (multiclass, argmax prediction); acc_top1 / acc_top2 (macro: mean per-class recall
    over the classes present, as torchmetrics MulticlassAccuracy(average="macro") when all are present);
    auc_macro (mean one-vs-rest AUC over the classes present); auc, f1, n_per_class (per class name,
    an absent class's AUC is None); f1_mean (mean of the K per-class F1, absent classes count as 0);
    confusion (K x K list, rows = true, columns = predicted); notes (list of strings).
    """
    labels, probs = check_predictions(labels, probs)
    num_classes = probs.shape[1]
    names = class_names_for(num_classes, class_names)
    counts = np.bincount(labels, minlength=num_classes)
    absent = [n for n, c in zip(names, counts) if c == 0]
    f1 = _per_class_f1(labels, probs)
    out = {"n": int(len(labels))}
    out.update({name: fn(labels, probs) for name, fn in SCALAR_METRICS.items()})
    out.update(
        auc=dict(zip(names, _per_class_auc(labels, probs))),
        f1={n: float(v) for n, v in zip(names, f1)},
        n_per_class={n: int(c) for n, c in zip(names, counts)},
        confusion=confusion_matrix(labels, probs.argmax(axis=1), labels=np.arange(num_classes)).tolist(),
        notes=[f"class(es) {', '.join(absent)} absent: AUC undefined, macro AUC/accuracy average the others"]
        if absent
        else [],
    )
    return out


def _stratified_resamples(labels: np.ndarray, n_boot: int, seed: int):
    """``n_boot`` index arrays, each resampling with replacement within every class (class counts kept)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(n_boot):
        yield np.concatenate([rng.choice(g, size=len(g)) for g in groups])


def _metric_fn(metric: str, n_boot: int, alpha: float):
    if metric not in SCALAR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(SCALAR_METRICS)}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    return SCALAR_METRICS[metric]


def bootstrap_ci(labels, probs, metric: str = "mcc", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05):
    """Percentile (1 - alpha) confidence interval of a scalar metric by stratified bootstrap.

    Each replicate resamples with replacement within every class, keeping the class counts, so every
    class of the split is present in every replicate (AUC and macro averages stay defined).
    Deterministic for a given seed. Returns (low, high) as floats.
    """
    labels, probs = check_predictions(labels, probs)
    fn = _metric_fn(metric, n_boot, alpha)
    stats = [fn(labels[idx], probs[idx]) for idx in _stratified_resamples(labels, n_boot, seed)]
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_difference(labels, probs_a, probs_b, metric: str = "mcc", n_boot: int = 1000, seed: int = 0,
                                alpha: float = 0.05) -> tuple[float, float, float]:
    """(metric(a) - metric(b), CI low, CI high): two models' predictions on the same subjects, each bootstrap
    replicate scoring both on the same resample (stratified as in `bootstrap_ci`), percentile CI."""
    labels, probs_a = check_predictions(labels, probs_a)
    _, probs_b = check_predictions(labels, probs_b)
    fn = _metric_fn(metric, n_boot, alpha)
    stats = [fn(labels[idx], probs_a[idx]) - fn(labels[idx], probs_b[idx])
             for idx in _stratified_resamples(labels, n_boot, seed)]
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(fn(labels, probs_a) - fn(labels, probs_b)), float(low), float(high)


def pooled_bootstrap(labels, terms, metric: str = "mcc", n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """(statistic, CI low, CI high) of sum over `terms` (weight, runs) of weight x the mean over runs of
    metric(labels, run), where runs (R, N, K) are predictions on the same N subjects (e.g. one per training seed).
    [(1, a)] is a seed-mean score, [(1, a), (-1, b)] a paired difference of two arms, [(1, a), (-1, a2), (-1, b),
    (1, b2)] a difference of two arms' drops. Each bootstrap replicate resamples the subjects once (stratified as
    in `bootstrap_ci`) and scores every run on that resample: the CI covers the test cohort's sampling."""
    terms = [(float(w), np.asarray(runs, np.float64)) for w, runs in terms]
    labels = check_predictions(labels, terms[0][1][0])[0]
    for _, runs in terms:
        if runs.ndim != 3 or runs.shape[1:] != terms[0][1].shape[1:]:
            raise ValueError(f"every term needs runs of shape (R, {len(labels)}, K), got {runs.shape}")
    fn = _metric_fn(metric, n_boot, alpha)

    def stat(idx):
        return sum(w * np.mean([fn(labels[idx], p[idx]) for p in runs]) for w, runs in terms)

    stats = [stat(idx) for idx in _stratified_resamples(labels, n_boot, seed)]
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(stat(np.arange(len(labels)))), float(low), float(high)


def mean_ci(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """{"mean", "ci" (percentile bootstrap of the mean, or None), "n"} of the finite `values` (NaN = undefined)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "ci": None, "n": 0}
    ci = None
    if n_boot and len(values) > 1:
        means = np.random.default_rng(seed).choice(values, (n_boot, len(values))).mean(axis=1)
        ci = [float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2])]
    return {"mean": float(values.mean()), "ci": ci, "n": int(len(values))}


def metrics_with_ci(labels, probs, n_boot: int, seed: int = 0, keys=("mcc", "acc_top1", "auc_macro")) -> dict:
    """`classification_metrics` plus {"ci": {key: [low, high]}} for `keys` (no CI when n_boot is 0)."""
    out = classification_metrics(labels, probs)
    if n_boot:
        out["ci"] = {k: list(bootstrap_ci(labels, probs, k, n_boot, seed)) for k in keys}
    return out

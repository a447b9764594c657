"""Logistic-regression probe on frozen features, with C selected by MCC on a stratified hold-out.

Protocol (MM-DINOv2 `dinov2/eval/log_regression.py`, on the full feature vector): standardise, sweep C
over `c_grid`, fit each C on (1 - holdout) of the train set and score MCC on the held-out rest, keep the best
C (ties: the smaller C), refit on the whole train set. The fitted probe is plain arrays; `Probe.predict_proba`
needs only numpy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef

DEFAULT_C_GRID = 10 ** np.linspace(-6, 5, 45)
SCALE_FLOOR = 1e-5
_ARRAYS = ("coef", "intercept", "mean", "scale", "classes")


def check_features(x, dim: int | None = None) -> np.ndarray:
    """Features as float64 (N, D); ValueError if empty, not 2-D, of the wrong width or not finite."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty feature matrix (N, D), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have {x.shape[1]} dimensions, the probe expects {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"features contain NaN or inf ({int((~np.isfinite(x)).any(axis=1).sum())} rows)")
    return x


def _check_train_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"expected {n} labels (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("train labels must be non-negative integers (drop unlabeled samples, -1)")
    if len(np.unique(y)) < 2:
        raise ValueError(f"the train set has a single class ({y[0]}); a probe needs at least two")
    return y.astype(np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit_idx, holdout_idx), sorted. Each class holds out round(fraction * n_c) samples,
    at least 1 and at most n_c - 1, so a class with >= 2 samples appears in both parts."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    hold = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_hold = min(max(int(np.floor(fraction * len(idx) + 0.5)), 1), len(idx) - 1)
        hold.append(idx[:n_hold])
    hold = np.sort(np.concatenate(hold))
    if len(hold) == 0:
        raise ValueError(f"too few train samples ({len(labels)}) to hold some out for choosing C")
    return np.setdiff1d(np.arange(len(labels)), hold), hold


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> LogisticRegression:
    """L2 multinomial logistic regression (lbfgs); non-convergence at extreme C is expected and silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter).fit(x, y)


def _holdout_mcc(x_fit, y_fit, x_hold, y_hold, c: float, max_iter: int) -> float:
    return float(matthews_corrcoef(y_hold, _fit_logreg(x_fit, y_fit, c, max_iter).predict(x_hold)))


@dataclass
class Probe:
    """A fitted probe: p = softmax(((x - mean) / scale) @ coef.T + intercept), columns ordered as `classes`."""

    c: float
    coef: np.ndarray  # (K, D)
    intercept: np.ndarray  # (K,)
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    classes: np.ndarray  # (K,) int labels of the probability columns
    selection: list[tuple[float, float]] = field(default_factory=list)  # (C, hold-out MCC) per grid point

    def decision_function(self, x) -> np.ndarray:
        """Logits (N, K)."""
        x = check_features(x, self.mean.shape[0])
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, x, num_classes: int | None = None) -> np.ndarray:
        """Probabilities (N, K); with `num_classes`, (N, num_classes) indexed by label, 0 for unseen classes."""
        z = self.decision_function(x)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if num_classes is None:
            return p
        if self.classes.max() >= num_classes:
            raise ValueError(f"probe has class {self.classes.max()}, beyond num_classes={num_classes}")
        out = np.zeros((len(p), num_classes))
        out[:, self.classes] = p
        return out

    def predict(self, x) -> np.ndarray:
        """Predicted labels (N,)."""
        return self.classes[self.decision_function(x).argmax(axis=1)]

    def to_dict(self) -> dict:
        """JSON-safe dict (lists and floats)."""
        out = {k: getattr(self, k).tolist() for k in _ARRAYS}
        return {"c": float(self.c), **out, "selection": [[float(c), float(m)] for c, m in self.selection]}

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        arrays = {k: np.asarray(d[k], dtype=np.int64 if k == "classes" else np.float64) for k in _ARRAYS}
        return cls(c=float(d["c"]), **arrays, selection=[(float(c), float(m)) for c, m in d["selection"]])

    def save_npz(self, path) -> None:
        """Write to exactly `path` (np.savez, no pickled objects)."""
        with open(path, "wb") as f:
            np.savez(f, c=np.float64(self.c), selection=np.asarray(self.selection, np.float64).reshape(-1, 2),
                     **{k: getattr(self, k) for k in _ARRAYS})

    @classmethod
    def load_npz(cls, path) -> Probe:
        with np.load(path, allow_pickle=False) as z:
            return cls(c=float(z["c"]), **{k: z[k] for k in _ARRAYS},
                       selection=[(float(c), float(m)) for c, m in z["selection"]])


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale). The scale is floored at SCALE_FLOOR x max(1, |mean|): a feature that
    varies across subjects only at float32 rounding level (e.g. 1e-7) must not be blown up into a signal,
    or the probe's output would depend on the batch shape the features were computed with."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.maximum(std, SCALE_FLOOR * np.maximum(1.0, np.abs(mean)))


def fit_probe(train_x, train_y, c_grid=DEFAULT_C_GRID, holdout: float = 0.1, seed: int = 0,
              max_iter: int = 1000, n_jobs: int = 1) -> Probe:
    """Fit the probe: choose C on a seeded stratified hold-out by MCC, then refit on all of train.

    Standardisation (mean/std per feature) is fit on the fit part while choosing C, and on the whole train
    set for the refit; the returned probe carries the latter. `n_jobs` > 1 sweeps C in parallel (joblib).
    """
    x = check_features(train_x)
    y = _check_train_labels(train_y, len(x))
    grid = np.sort(np.asarray(c_grid, dtype=np.float64).ravel())
    if len(grid) == 0 or not (grid > 0).all():
        raise ValueError("c_grid must hold at least one positive C")
    fit_idx, hold_idx = stratified_holdout(y, holdout, seed)
    mean, scale = standardiser(x[fit_idx])
    x_fit, x_hold = (x[fit_idx] - mean) / scale, (x[hold_idx] - mean) / scale
    scores = Parallel(n_jobs=n_jobs)(
        delayed(_holdout_mcc)(x_fit, y[fit_idx], x_hold, y[hold_idx], c, max_iter) for c in grid
    )
    best_c = float(grid[int(np.argmax(scores))])  # first maximum: the smaller C wins ties
    probe = fit_fixed_c(x, y, best_c, max_iter)
    probe.selection = [(float(c), s) for c, s in zip(grid, scores)]
    return probe


def fit_fixed_c(train_x, train_y, c: float, max_iter: int = 1000) -> Probe:
    """The probe with a given C (no selection), standardised on all of `train_x`.

    A binary probe is stored in symmetric softmax form (coef rows -w/2, +w/2), equal to sklearn's sigmoid.
    """
    x = check_features(train_x)
    y = _check_train_labels(train_y, len(x))
    mean, scale = standardiser(x)
    model = _fit_logreg((x - mean) / scale, y, c, max_iter)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return Probe(c=float(c), coef=coef, intercept=intercept, mean=mean, scale=scale,
                 classes=model.classes_.astype(np.int64))

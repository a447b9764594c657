"""The reproduction grid's numbers from its cells (mmdino_jax/experiments/cell.py results): the flat results
table, per arm and label fraction mean and sd over seeds with pooled bootstrap CIs, and the two claims.

Pooled CIs (`metrics.pooled_bootstrap`): each replicate resamples the external test subjects once and scores every
seed's predictions on it, so a CI covers the test cohort's sampling of the seed-mean; the sd covers the seeds.
"""

from __future__ import annotations

import numpy as np

from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.eval import metrics as metrics_lib

SCALARS = ("mcc", "auc_macro", "f1_mean")


def one_hot(pred) -> np.ndarray:
    return np.eye(len(CLASS_NAMES))[np.asarray(pred, int)]


def case_runs(cells: list[dict], case: str, rows: np.ndarray | None = None) -> np.ndarray:
    """(R, N, K) one-hot test predictions of `cells` (one per seed) in a missing-sequence case, on `rows`
    (test subject indices; default the case's own rows, identical across cells of one cohort)."""
    runs = []
    for cell in cells:
        c = cell["cases"][case]
        pred = np.full(len(cell["test_labels"]), -1)
        pred[c["rows"]] = c["pred"]
        picked = pred[np.asarray(c["rows"] if rows is None else rows)]
        if (picked < 0).any():
            raise ValueError(f"{cell['arm']} seed {cell['seed']}: case {case} lacks some of the requested subjects")
        runs.append(one_hot(picked))
    return np.stack(runs)


def case_mcc(cell: dict, case: str) -> float:
    c = cell["cases"][case]
    labels = np.asarray(cell["test_labels"])[c["rows"]]
    return metrics_lib.SCALAR_METRICS["mcc"](labels, one_hot(c["pred"]))


def missing_cases(cell: dict) -> list[str]:
    return [c for c in cell["cases"] if c != "all"]


def table_rows(cells: list[dict]) -> list[dict]:
    """One flat row per cell (the CSV results table)."""
    rows = []
    for cell in sorted(cells, key=lambda c: (c["arm"], c["fraction"], c["seed"])):
        row = {k: cell[k] for k in ("arm", "seed", "fraction", "n_labeled", "steps", "seconds")}
        row.update({f"val_{m}": cell["val"][m] for m in SCALARS})
        row.update({f"test_{m}": cell["test"][m] for m in SCALARS})
        row["test_mcc_ci_low"], row["test_mcc_ci_high"] = cell["test"]["mcc_ci"]
        row.update({f"test_mcc_{case}": case_mcc(cell, case) for case in missing_cases(cell)})
        rows.append(row)
    return rows


def group(cells: list[dict], arm: str, fraction: float) -> list[dict]:
    """The cells of one arm and label fraction, by seed."""
    picked = [c for c in cells if c["arm"] == arm and np.isclose(c["fraction"], fraction)]
    return sorted(picked, key=lambda c: c["seed"])


def _mean_sd(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def arm_summary(cells: list[dict], arm: str, fraction: float, n_boot: int, seed: int = 0) -> dict:
    """Mean and sd over seeds of val / test MCC, AUC, F1 and (n_boot > 0) the pooled bootstrap CI of the test MCC."""
    g = group(cells, arm, fraction)
    out = {"seeds": len(g), "n_labeled": _mean_sd([c["n_labeled"] for c in g])[0]}
    for split in ("val", "test"):
        out[split] = {m: _mean_sd([c[split][m] for c in g]) for m in SCALARS}
    if n_boot:
        labels = np.asarray(g[0]["test_labels"])[g[0]["cases"]["all"]["rows"]]
        out["test_mcc_pooled"] = metrics_lib.pooled_bootstrap(labels, [(1, case_runs(g, "all"))], "mcc", n_boot, seed)
    return out


def paired_difference(cells: list[dict], arm_a: str, arm_b: str, fraction: float, n_boot: int,
                      seed: int = 0) -> dict:
    """Test MCC of arm a minus arm b at one label fraction: per seed (paired bootstrap CI) and pooled."""
    a, b = group(cells, arm_a, fraction), group(cells, arm_b, fraction)
    seeds = sorted({c["seed"] for c in a} & {c["seed"] for c in b})
    a = [c for c in a if c["seed"] in seeds]
    b = [c for c in b if c["seed"] in seeds]
    labels = np.asarray(a[0]["test_labels"])[a[0]["cases"]["all"]["rows"]]
    runs_a, runs_b = case_runs(a, "all"), case_runs(b, "all")
    per_seed = {s: metrics_lib.paired_bootstrap_difference(labels, ra, rb, "mcc", n_boot, seed)
                for s, ra, rb in zip(seeds, runs_a, runs_b)}
    pooled = metrics_lib.pooled_bootstrap(labels, [(1, runs_a), (-1, runs_b)], "mcc", n_boot, seed)
    return {"per_seed": per_seed, "pooled": pooled}


def _drop_terms(g: list[dict], case: str, sign: float):
    rows = np.asarray(g[0]["cases"][case]["rows"])
    return [(sign, case_runs(g, "all", rows)), (-sign, case_runs(g, case))], rows


def sequence_drops(cells: list[dict], arm: str, fraction: float, n_boot: int, seed: int = 0) -> dict:
    """Per missing-sequence case: test MCC with every sequence minus with that one removed, on the subjects left
    with a sequence (mean over seeds, pooled CI), and the mean MCC with it removed."""
    g = group(cells, arm, fraction)
    out = {}
    for case in missing_cases(g[0]):
        terms, rows = _drop_terms(g, case, 1.0)
        labels = np.asarray(g[0]["test_labels"])[rows]
        out[case] = {"drop": metrics_lib.pooled_bootstrap(labels, terms, "mcc", n_boot, seed),
                     "mcc": _mean_sd([case_mcc(c, case) for c in g])}
    return out


def drop_difference(cells: list[dict], arm_a: str, arm_b: str, fraction: float, n_boot: int,
                    seed: int = 0) -> dict:
    """Per missing-sequence case: arm a's MCC drop minus arm b's (negative: a loses less), pooled CI."""
    a, b = group(cells, arm_a, fraction), group(cells, arm_b, fraction)
    out = {}
    for case in missing_cases(a[0]):
        terms_a, rows = _drop_terms(a, case, 1.0)
        terms_b, _ = _drop_terms(b, case, -1.0)
        labels = np.asarray(a[0]["test_labels"])[rows]
        out[case] = metrics_lib.pooled_bootstrap(labels, terms_a + terms_b, "mcc", n_boot, seed)
    return out

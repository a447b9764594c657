"""The reproduction grid (mmdino_jax/experiments): quick size end to end with an interruption and a resume, and
its statistics against independent numpy references."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from mmdino_jax.eval import metrics as metrics_lib
from mmdino_jax.experiments import report, reproduce, summary


def test_quick_grid_resumes_and_reports(tmp_path):
    out, doc = tmp_path / "grid", tmp_path / "docs" / "reproduction.md"
    args = ["--size", "quick", "--out", str(out), "--report", str(doc), "--fractions", "1.0", "--seeds", "1"]
    # in-process (no interpreter start per cell), interrupted after the 3 trained arms of the 5 cells
    assert reproduce.main([*args, "--workers", "0", "--limit", "3"]) == 3
    assert not (out / "results.csv").exists() and not doc.exists()
    assert reproduce.main([*args, "--workers", "2"]) == 2  # resumed: the other 2, in concurrent subprocesses
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["arm"] for r in rows) == sorted(
        ("mmdino", "no_modality_masking", "supervised", "random_init", "radiomics"))
    assert all(-1 <= float(r["test_mcc_no_flair"]) <= 1 for r in rows)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert reproduce.main(args) == 0  # a finished grid does no work
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    text = doc.read_text()
    assert "Claim (a)" in text and "Claim (b)" in text and "Cut short" not in text
    assert (tmp_path / "docs" / "reproduction" / "label_efficiency.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "reproduction" / "robustness.png").stat().st_size > 1000
    # the same grid with a second seed, reported as it stands: what finished, the rest named, nothing run
    assert reproduce.main([*args[:-1], "2", "--finished"]) == 0
    assert "Cut short" in doc.read_text() and "random_init_seed1_frac1" in doc.read_text()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps


def _cell(arm, seed, labels, all_pred, removed_rows, removed_pred):
    return {"arm": arm, "seed": seed, "fraction": 0.25, "n_labeled": 10, "steps": 1, "seconds": 1.0,
            "val": {"mcc": 0.1, "auc_macro": 0.5, "f1_mean": 0.3},
            "test": {"mcc": 0.0, "auc_macro": 0.5, "f1_mean": 0.3, "mcc_ci": [0, 0]},
            "test_labels": labels.tolist(),
            "cases": {"all": {"rows": list(range(len(labels))), "pred": all_pred.tolist()},
                      "no_t1": {"rows": removed_rows.tolist(), "pred": removed_pred.tolist()}}}


@pytest.fixture
def cells():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    rows = np.flatnonzero(rng.random(60) > 0.1)
    out = []
    for arm, noise in (("mmdino", 0.3), ("supervised", 0.6), ("no_modality_masking", 0.3)):
        for seed in range(3):
            pred = np.where(rng.random(60) < noise, rng.integers(0, 3, 60), labels)
            removed = np.where(rng.random(len(rows)) < noise + 0.2, rng.integers(0, 3, len(rows)), labels[rows])
            out.append(_cell(arm, seed, labels, pred, rows, removed))
    return out


def _mcc(cell, case, rows=None):
    c = cell["cases"][case]
    pred = np.full(60, -1)
    pred[c["rows"]] = c["pred"]
    rows = c["rows"] if rows is None else rows
    return matthews_corrcoef(np.asarray(cell["test_labels"])[rows], pred[rows])


def test_paired_difference_matches_numpy(cells):
    out = summary.paired_difference(cells, "mmdino", "supervised", 0.25, 60)
    a, b = summary.group(cells, "mmdino", 0.25), summary.group(cells, "supervised", 0.25)
    expected = np.mean([_mcc(x, "all") - _mcc(y, "all") for x, y in zip(a, b)])
    assert out["pooled"][0] == pytest.approx(expected)
    assert out["pooled"][1] <= expected <= out["pooled"][2]
    for seed, (diff, low, high) in out["per_seed"].items():
        assert diff == pytest.approx(_mcc(a[seed], "all") - _mcc(b[seed], "all"))
        assert low <= diff <= high


def test_pooled_bootstrap_resamples_subjects_once_per_replicate():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 15)
    runs = np.eye(3)[np.where(rng.random((2, 45)) < 0.4, rng.integers(0, 3, (2, 45)), labels)]
    stat, low, high = metrics_lib.pooled_bootstrap(labels, [(1, runs)], "mcc", 60, seed=5)
    # numpy reference: the same stratified resamples (seeded generator, class by class)
    gen = np.random.default_rng(5)
    groups = [np.flatnonzero(labels == c) for c in range(3)]
    ref = []
    for _ in range(60):
        idx = np.concatenate([gen.choice(g, size=len(g)) for g in groups])
        ref.append(np.mean([matthews_corrcoef(labels[idx], r[idx].argmax(1)) for r in runs]))
    assert stat == pytest.approx(np.mean([matthews_corrcoef(labels, r.argmax(1)) for r in runs]))
    assert (low, high) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])))


def test_drops_and_report_from_the_table(cells, tmp_path):
    drops = summary.sequence_drops(cells, "mmdino", 0.25, 20)
    g = summary.group(cells, "mmdino", 0.25)
    rows = g[0]["cases"]["no_t1"]["rows"]
    expected = np.mean([_mcc(c, "all", rows) - _mcc(c, "no_t1") for c in g])
    assert drops["no_t1"]["drop"][0] == pytest.approx(expected)
    diff = summary.drop_difference(cells, "mmdino", "no_modality_masking", 0.25, 20)["no_t1"][0]
    h = summary.group(cells, "no_modality_masking", 0.25)
    assert diff == pytest.approx(expected - np.mean([_mcc(c, "all", rows) - _mcc(c, "no_t1") for c in h]))
    info = {"header": ["# header"], "footer": ["footer"]}
    path = report.write_report(tmp_path / "r.md", cells, ["mmdino", "no_modality_masking", "supervised"], [0.25],
                               20, info)
    text = path.read_text()
    pooled = summary.paired_difference(cells, "mmdino", "supervised", 0.25, 20)["pooled"]
    assert f"| pooled (mean over seeds) | {pooled[0]:+.3f}" in text
    assert json.dumps(summary.table_rows(cells))  # the flat table is JSON-safe

"""The evaluation protocols: kNN, few-shot, subject level over many slices, segmentation from patch tokens.

Reference tests check each protocol's logic against an independent computation; one module-scoped
evaluation of a random-init smoke backbone checks that every protocol lands in metrics.json, report.md
and its plot.
"""

import json

import numpy as np
import pytest
from flax import nnx

from mmdino_jax.config_base import load_config
from mmdino_jax.constants import SEQUENCES
from mmdino_jax.eval import fewshot, knn, multislice, segmentation
from mmdino_jax.eval.report import compare_runs, write_report_md
from mmdino_jax.models.build import build_models

SMOKE = "configs/demo.py:smoke"


def brute_force_knn(train_x, train_y, test_x, k, t, num_classes):
    out = []
    for q in test_x:
        sims = [float(np.dot(q, x) / np.linalg.norm(q) / np.linalg.norm(x)) for x in train_x]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[train_y[i]] += np.exp(sims[i] / t)
        out.append([v / sum(votes) for v in votes])
    return np.array(out)


def test_knn_votes_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(40, 8)), rng.normal(size=(15, 8))
    train_y = rng.integers(0, 3, 40)
    for k in (1, 10, 20, 100):  # 100 > bank: every train sample votes
        np.testing.assert_allclose(knn.knn_probs(train_x, train_y, test_x, k, 0.07, 3),
                                   brute_force_knn(train_x, train_y, test_x, min(k, 40), 0.07, 3), rtol=1e-10)


def test_fewshot_draws_are_stratified_distinct_and_reproducible():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 9 + [-1] * 4)
    draws = fewshot.stratified_draws(labels, 4, 10, seed=3)
    assert len(draws) == 10 and len({tuple(d) for d in draws}) > 1
    for d in draws:
        assert len(set(d)) == len(d) and np.bincount(labels[d], minlength=3).tolist() == [4, 4, 4]
    again = fewshot.stratified_draws(labels, 4, 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    assert not all(np.array_equal(a, b) for a, b in zip(draws, fewshot.stratified_draws(labels, 4, 10, seed=4)))
    with pytest.raises(ValueError, match="smallest class has 5"):
        fewshot.stratified_draws(labels, 8, 10, seed=3)


def test_fewshot_protocol_records_skipped_shot_counts():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 3)
    x = rng.normal(size=(9, 4)) + y[:, None]
    result = fewshot.fewshot_protocol((x, y), {"val": (x, y)}, (1, 2, 4), 5, 1.0, 3, seed=0)
    assert len(result["shots"]["1"]["val"]["mcc"]) == 5 and "skipped" in result["shots"]["4"]
    assert result["shots"]["2"]["val"]["sd"] == pytest.approx(np.std(result["shots"]["2"]["val"]["mcc"], ddof=1))


def test_dice_and_hd95_of_a_hand_checked_case():
    truth = np.zeros((1, 96, 96), np.uint8)
    truth[0, 10:20, 10:20] = 2  # oedema 10x10 with a 4x4 enhancing core
    truth[0, 13:17, 13:17] = 4
    pred = np.zeros_like(truth)
    pred[0, 10:20, 12:22] = 2  # whole tumour shifted 2 px right, no core predicted
    scores = segmentation.region_scores(pred, truth)
    assert scores["wt"]["dice"][0] == pytest.approx(2 * 80 / 200)
    # every boundary pixel is 0 or 2 px from the other boundary; > 5 % are 2 px away
    assert scores["wt"]["hd95"][0] == pytest.approx(2.0)
    assert scores["et"]["dice"][0] == 0 and scores["et"]["hd95"][0] == pytest.approx(np.hypot(96, 96))
    empty = segmentation.region_scores(pred, np.zeros_like(truth))
    assert np.isnan(empty["wt"]["dice"][0])  # no true tumour: the subject is left out of the region
    summary = segmentation.summarise(scores, pred, 0, 0)
    assert summary["et"]["empty_prediction"] == 1 and summary["wt"]["dice"]["n"] == 1


def test_linear_decoder_learns_labels_written_in_the_tokens():
    """Tokens that carry the label one-hot: the decoder must recover the label maps almost exactly."""
    rng = np.random.default_rng(0)
    grid = rng.choice([0, 1, 2, 4], size=(12, 6, 6), p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8)
    onehot = (grid[..., None] == np.array([0, 1, 2, 4])).astype(np.float16)
    tokens = np.concatenate([onehot, rng.normal(size=(12, 6, 6, 4)).astype(np.float16)], -1)[:, None]
    labels = grid.repeat(16, 1).repeat(16, 2)  # 96 x 96, piecewise constant on the 6 x 6 token grid
    keep = np.ones((12, 1), bool)
    cfg = load_config(SMOKE).eval.segmentation  # concat tokens, weighted CE (the e2e test runs the others)
    cfg.update(steps=60, lr=0.1, batch_size=12)
    params, losses = segmentation.train_decoder(tokens, keep, labels, cfg, seed=0)
    assert losses[-1] < losses[0] / 2
    assert (segmentation.predict_labels(params, tokens, keep, cfg) == labels).mean() > 0.85


def test_top_slices_and_aggregation():
    np.testing.assert_array_equal(multislice.top_slices([0, 5, 3, 5, 0, 1], 3), [1, 3, 2])
    np.testing.assert_array_equal(multislice.top_slices([0, 2, 0], 3), [1])  # tumour-free slices never count
    values = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(multislice.aggregate(values, np.array([0, 0, 1]), 2), [[0.5, 0.5], [0.5, 0.5]])


def test_largest_slices_of_a_volume_match_the_cache_rows(tmp_path):
    """predict --slices reads a volume; evaluation reads the cache: both must pick the same slices."""
    from test_cohort import write_subject

    from mmdino_jax.data.cohort import discover
    from mmdino_jax.data.pipeline import CachedSplit
    from mmdino_jax.data.prepare import prepare, read_subject

    write_subject(tmp_path / "root", "mmdino", 1)
    prepare(tmp_path / "root", "mmdino", tmp_path / "cache", workers=1)
    data = CachedSplit(tmp_path / "cache", "train")
    rows = multislice.cached_rows(data, 0, 2)
    volumes, labels, _, voxel_mm, _ = read_subject(discover(tmp_path / "root", "mmdino")[0][0])
    crops = multislice.crop_largest_slices(volumes, labels, 2, voxel_mm)
    np.testing.assert_array_equal(crops, np.stack([data.slice(r)[0] for r in rows]))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, smoke_cache):
    """One evaluation of a random-init smoke backbone with every protocol on two sequences."""
    from mmdino_jax.eval.backbone import evaluate_backbone

    work = tmp_path_factory.mktemp("protocols")
    config = load_config(SMOKE)
    config.data.sequences = "t2,flair"  # 3 sequence subsets keep the sweep short
    config.eval.protocols = "knn,fewshot,subject,segmentation"
    config.eval.bootstrap = 20
    config.eval.fewshot_draws = 10
    config.eval.segmentation.update(tokens="per_sequence", loss="dice_ce")
    config.eval.compare_init = False  # the backbone is the random init; the initial rows are rendered below
    config.data.cache = str(smoke_cache)
    backbone, _, _ = build_models(config.model, config.seed)
    graphdef, params = nnx.split(backbone)
    payload = evaluate_backbone(config, str(work), graphdef, params, 0)
    return work, payload


def test_every_protocol_lands_in_metrics_report_plots_and_compare(evaluated):
    work, payload = evaluated
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics.keys() >= {"knn", "fewshot", "subject_level", "segmentation"}
    for k in ("k10", "k20"):
        for split in ("val", "test"):
            m = metrics["knn"][k][split]
            assert -1 <= m["mcc"] <= 1 and 0 <= m["auc_macro"] <= 1 and len(m["ci"]["acc_top1"]) == 2
        assert metrics["sweep"][f"knn_{k}"].keys() == {"t2", "flair", "t2+flair", "random"}
    shots = metrics["fewshot"]["shots"]
    assert len(shots["1"]["test"]["mcc"]) == 10 and "skipped" in shots["16"]  # 6 labeled train subjects
    for split in ("val", "test"):
        level = metrics["subject_level"]["splits"][split]
        assert level["n_slices"] > metrics["splits"][split]["n"]  # several slices per subject
        assert {"probs", "features"} <= level.keys() and -1 <= level["probs"]["mcc"] <= 1
        seg = metrics["segmentation"]["splits"][split]
        assert 0 <= seg["wt"]["dice"]["mean"] <= 1 and seg["wt"]["hd95"]["mean"] >= 0
    assert metrics["segmentation"]["missing"]["dice"].keys() == {"t2", "flair"}
    report = (work / "eval" / "report.md").read_text()
    for title in ("## kNN on CLS features", "### kNN over sequence subsets", "## Few-shot probe",
                  "## Subject level", "## Segmentation from frozen patch tokens", "### Dice with one sequence missing"):
        assert title in report
    for plot in ("knn_subsets.png", "fewshot.png", "subject_level.png", "segmentation.png"):
        assert (work / "eval" / plot).stat().st_size > 1000
    table = compare_runs([work])
    assert "test kNN k=10 MCC" in table and "test segmentation Dice WT" in table
    assert "test few-shot 1/class MCC" in table and "test subject-level MCC (mean of probs)" in table
    assert set(SEQUENCES) >= set(metrics["sequences"])


def test_the_initial_backbone_row_shows_every_protocol(evaluated, tmp_path):
    """evaluate's initial comparison carries run_protocols' entries; the report puts them beside the trained."""
    _, payload = evaluated
    protocols = {k: payload[k] for k in ("knn", "fewshot", "subject_level", "segmentation")}
    initial = {"name": "random init", "splits": payload["splits"], "probe": payload["probe"],
               "difference": {s: {"mcc": 0.0, "ci": [0.0, 0.0]} for s in payload["splits"]}, "protocols": protocols}
    report = write_report_md(tmp_path / "report.md", {**payload, "initial": initial}, {}).read_text()
    section = report[report.index("### The protocols: trained vs random init"):]
    for row in ("| test kNN k=20 MCC |", "| val few-shot 2/class MCC |",
                "| test subject-level MCC (mean of features) |", "| test segmentation Dice ET |"):
        assert row in section

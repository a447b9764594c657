"""eval/metrics.py against scikit-learn and hand-computed cases."""

import json

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
    top_k_accuracy_score,
)

from mmdino_jax.constants import CLASS_NAMES
from mmdino_jax.eval.metrics import bootstrap_ci, classification_metrics, paired_bootstrap_difference


def _random_case(n=300, k=3, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + signal * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


# Hand-computed: predictions 0,0,1 | 1,2 | 2,2,0 -> confusion [[2,1,0],[0,1,1],[1,0,2]].
HAND_LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
HAND_PROBS = np.array([
    [0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.3, 0.5, 0.2],  # third: top-2 {1, 0} hits
    [0.15, 0.8, 0.05], [0.3, 0.2, 0.5],  # second: top-2 {2, 0} misses
    [0.1, 0.2, 0.7], [0.2, 0.1, 0.7], [0.5, 0.1, 0.4],  # third: top-2 {0, 2} hits
])


def test_hand_computed_three_class():
    m = classification_metrics(HAND_LABELS, HAND_PROBS)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    # (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) = (5*8 - 22) / (64 - 22)
    assert m["mcc"] == pytest.approx(3 / 7)
    assert m["acc_top1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["acc_top2"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert m["f1"] == pytest.approx(dict(zip(CLASS_NAMES, [2 / 3, 1 / 2, 2 / 3])))
    assert m["f1_mean"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["n_per_class"] == dict(zip(CLASS_NAMES, [3, 2, 3]))
    assert m["n"] == 8 and m["notes"] == []


def test_perfect_prediction():
    labels = np.array([0, 1, 2, 2, 1, 0])
    m = classification_metrics(labels, np.eye(3)[labels])
    assert m["mcc"] == 1.0 and m["acc_top1"] == 1.0 and m["auc_macro"] == 1.0 and m["f1_mean"] == 1.0


def test_matches_sklearn_on_random_data():
    labels, probs = _random_case()
    m = classification_metrics(labels, probs)
    pred = probs.argmax(axis=1)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
    assert m["acc_top1"] == pytest.approx(balanced_accuracy_score(labels, pred))
    per_class_top2 = [top_k_accuracy_score(labels[labels == c], probs[labels == c], k=2, labels=range(3))
                      for c in range(3)]
    assert m["acc_top2"] == pytest.approx(np.mean(per_class_top2))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    for c, name in enumerate(CLASS_NAMES):
        assert m["auc"][name] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    assert m["f1_mean"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["confusion"] == confusion_matrix(labels, pred).tolist()
    assert json.loads(json.dumps(m)) == m  # plain Python types only


def test_absent_class_gives_none_auc_with_note():
    labels, probs = _random_case()
    keep = labels < 2
    m = classification_metrics(labels[keep], probs[keep])
    assert m["auc"]["oligodendroglioma"] is None and m["n_per_class"]["oligodendroglioma"] == 0
    assert m["auc_macro"] == pytest.approx((m["auc"]["astrocytoma"] + m["auc"]["glioblastoma"]) / 2)
    assert "oligodendroglioma" in m["notes"][0]


@pytest.mark.parametrize("labels, probs, match", [
    (np.array([], int), np.zeros((0, 3)), "empty"),
    (np.array([0, 1]), np.full((3, 3), 1 / 3), "2 labels but 3"),
    (np.array([1, 1, 1]), np.full((3, 3), 1 / 3), "single class"),
    (np.array([0, 1, 2]), np.array([[np.nan, 0.5, 0.5]] + [[1 / 3] * 3] * 2), "NaN"),
    (np.array([0, 1, -1]), np.full((3, 3), 1 / 3), "unlabeled"),
    (np.array([0, 1, 1]), np.full((3, 2), 0.5), "3 class names"),
])
def test_bad_input(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, probs)


def test_bootstrap_deterministic_and_covers_estimate():
    labels, probs = _random_case(n=600)
    ci = bootstrap_ci(labels, probs, "mcc", n_boot=200, seed=3)
    assert ci == bootstrap_ci(labels, probs, "mcc", n_boot=200, seed=3)
    assert ci != bootstrap_ci(labels, probs, "mcc", n_boot=200, seed=4)
    m = classification_metrics(labels, probs)
    for key in ("mcc", "auc_macro"):
        low, high = bootstrap_ci(labels, probs, key, n_boot=200)
        assert low < m[key] < high and high - low < 0.2


def test_bootstrap_rejects_unknown_metric():
    labels, probs = _random_case(n=30)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(labels, probs, "accuracy")


def test_paired_bootstrap_difference_matches_a_numpy_reference():
    labels, probs_a = _random_case(n=120, signal=2.0, seed=5)
    _, probs_b = _random_case(n=120, signal=0.3, seed=6)
    diff, low, high = paired_bootstrap_difference(labels, probs_a, probs_b, "mcc", n_boot=40, seed=2)
    rng = np.random.default_rng(2)  # same stratified resampling, scored with scikit-learn
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    stats = []
    for _ in range(40):
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        stats.append(matthews_corrcoef(labels[idx], probs_a[idx].argmax(1))
                     - matthews_corrcoef(labels[idx], probs_b[idx].argmax(1)))
    full = matthews_corrcoef(labels, probs_a.argmax(1)) - matthews_corrcoef(labels, probs_b.argmax(1))
    assert diff == pytest.approx(full)
    np.testing.assert_allclose([low, high], np.quantile(stats, [0.025, 0.975]), atol=1e-9)
    assert 0 < low < diff < high
    assert paired_bootstrap_difference(labels, probs_a, probs_a, n_boot=20) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("case", ["random", "one predicted class", "perfect", "inverted", "class never predicted"])
def test_mcc_from_confusion_counts_equals_sklearn(case):
    from mmdino_jax.eval.metrics import _mcc

    labels, probs = _random_case(n=97, signal=0.5, seed=3)
    if case == "one predicted class":
        probs = np.tile([0.2, 0.7, 0.1], (len(labels), 1))
    elif case == "perfect":
        probs = np.eye(3)[labels]
    elif case == "inverted":
        probs = np.eye(3)[(labels + 1) % 3]
    elif case == "class never predicted":
        probs = np.eye(3)[np.where(labels == 2, 0, labels)]
    assert _mcc(labels, probs) == pytest.approx(matthews_corrcoef(labels, probs.argmax(1)), abs=1e-12)

"""Learning signals of the train step, the run-health warnings, the KoLeo warmup: against numpy."""

import math

import numpy as np
import pytest

from mmdino_jax.optim import linear_warmup
from mmdino_jax.ssl.signals import HealthCheck, labeled_accuracy, teacher_signals


def test_labeled_accuracy_counts_labeled_samples_of_every_crop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 3)).astype(np.float32)
    labels = np.array([0, -1, 2, 1, -1, 2])
    labeled = labels >= 0
    expected = np.mean(np.argmax(logits[:, labeled], -1) == labels[labeled][None])
    assert float(labeled_accuracy(logits, labels)) == pytest.approx(expected)


def test_teacher_entropy_and_prototype_usage():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(2, 5)).astype(np.float32)
    out = teacher_signals(probs)
    flat = probs.reshape(-1, 4)
    assert float(out["teacher_entropy"]) == pytest.approx(np.mean(-np.sum(flat * np.log(flat), -1)), rel=1e-5)
    assert float(out["teacher_usage"]) == pytest.approx(len(np.unique(flat.argmax(-1))) / 4)
    one_hot = np.eye(4, dtype=np.float32)[np.zeros(10, int)]
    assert float(teacher_signals(one_hot)["teacher_usage"]) == pytest.approx(0.25)


def record(step, loss, usage=1.0, entropy=0.5):
    return {"step": step, "loss": loss, "teacher_usage": usage, "teacher_entropy": entropy}


def test_health_check_warns_once_per_condition_after_its_patience():
    health = HealthCheck(n_prototypes=3, patience=3, grace=10)
    assert health.update(record(10, 5.0, usage=1 / 3)) == []  # in the grace period
    assert health.update(record(20, 4.0, usage=1 / 3)) == []
    assert health.update(record(30, 3.5, usage=1 / 3)) == []
    [warning] = health.update(record(40, 3.0, usage=1 / 3))
    assert "collapsing" in warning and "steps 20-40" in warning
    assert health.update(record(50, 2.9, usage=1 / 3)) == []  # said once
    uniform = HealthCheck(3, patience=2)
    uniform.update(record(1, 3.0, entropy=math.log(3)))
    assert any("uniform" in w for w in uniform.update(record(2, 2.0, entropy=0.99 * math.log(3))))
    stuck = HealthCheck(3, patience=2)
    stuck.update(record(1, 2.0))
    assert [w for w in stuck.update(record(2, 2.0 + 1e-5)) if "stuck" in w]
    healthy = HealthCheck(3, patience=2)
    assert healthy.update(record(1, 3.0)) == [] and healthy.update(record(2, 2.5)) == []


def test_linear_warmup_matches_numpy():
    np.testing.assert_allclose(linear_warmup(5), np.concatenate([np.linspace(0, 1, 5), [1.0]]))
    np.testing.assert_allclose(linear_warmup(0), [1.0])

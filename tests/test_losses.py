"""Losses against loop-based references that follow DINOv2 / MM-DINOv2's normalisations literally."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdino_jax.models.vit import take_rows
from mmdino_jax.ssl import losses, masking

RNG = np.random.default_rng(0)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _probs(*shape):
    return np.exp(_log_softmax(RNG.normal(size=shape)))


def _reference_dino(student_global, student_local, teacher, temp=0.1):
    """DINOv2's DINOLoss calls in ssl_meta_arch, with the teacher chunks swapped to [crop1, crop0]."""
    swapped = [teacher[1], teacher[0]]

    def dino(students, teachers):
        total = 0.0
        for s in students:
            lsm = _log_softmax(s / temp)
            for t in teachers:
                total -= np.mean(np.sum(t * lsm, axis=-1))
        return total

    n_terms = len(student_local) * 2 + (2 - 1) * 2
    local = dino(list(student_local), swapped) / n_terms
    global_ = dino([np.concatenate(list(student_global))], [np.concatenate(swapped)]) * 2 / n_terms
    return local, global_


@pytest.mark.parametrize("n_local", [8, 2])
def test_dino_loss_matches_reference(n_local):
    batch, k = 5, 3
    sg, sl = RNG.normal(size=(2, batch, k)), RNG.normal(size=(n_local, batch, k))
    teacher = _probs(2, batch, k)
    local, global_ = losses.dino_loss(jnp.asarray(sg), jnp.asarray(sl), jnp.asarray(teacher))
    ref_local, ref_global = _reference_dino(sg, sl, teacher)
    np.testing.assert_allclose([local, global_], [ref_local, ref_global], rtol=1e-5)


def test_ibot_loss_matches_masks_weight_formula():
    crops, tokens, k = 6, 10, 4
    s, t = RNG.normal(size=(crops, tokens, k)), _probs(crops, tokens, k)
    mask = RNG.random((crops, tokens)) < 0.4
    mask[2] = False  # a crop without masked tokens still counts in the denominator
    # reference: gather masked tokens, weight each by 1 / n_masked of its crop, sum, divide by n_crops
    weights = np.repeat(1.0 / np.maximum(mask.sum(-1), 1), tokens).reshape(crops, tokens)[mask]
    per_token = np.sum(t[mask] * _log_softmax(s[mask] / 0.1), axis=-1)
    expected = -np.sum(per_token * weights) / crops * 2 * 0.5
    weights = losses.ibot_token_weights(jnp.asarray(mask))
    got = losses.ibot_loss(jnp.asarray(s), jnp.asarray(t), weights)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the same loss from the gathered target tokens only, in two groups of crops padded to a bound
    bound = int(mask.reshape(2, -1).sum(1).max()) + 3  # padded rows must weigh nothing
    rows, valid = masking.target_rows(jnp.asarray(mask), 2, bound)
    gathered = losses.ibot_loss(take_rows(jnp.asarray(s), rows), take_rows(jnp.asarray(t), rows),
                                take_rows(weights, rows) * valid)
    np.testing.assert_allclose(gathered, expected, rtol=1e-5)


def _reference_koleo(x, eps=1e-8):
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    total = 0.0
    for i in range(len(x)):
        dots = [(-1.0 if j == i else x[i] @ x[j]) for j in range(len(x))]
        nn = int(np.argmax(dots))
        total += np.log(np.linalg.norm(x[i] - x[nn] + eps) + eps)
    return -total / len(x)


def test_koleo_loss_matches_reference():
    x = RNG.normal(size=(2, 7, 5)).astype(np.float32)
    koleo = jax.jit(losses.koleo_loss)
    got = koleo(jnp.asarray(x))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, [_reference_koleo(c) for c in x], rtol=1e-5)
    np.testing.assert_allclose(koleo(jnp.asarray(x[0])), _reference_koleo(x[0]), rtol=1e-5)


def test_koleo_loss_sharded_on_8_devices():
    """Per-device KoLeo averaged over 8 simulated CPU devices (in a subprocess, to keep 1 device here)."""
    x = RNG.normal(size=(2, 32, 6)).astype(np.float32)
    script = textwrap.dedent(
        """
        import json, sys
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from mmdino_jax.ssl import losses, masking
        x = np.asarray(json.loads(sys.stdin.read()), np.float32)
        mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        xs = jax.device_put(x, NamedSharding(mesh, P(None, "data", None)))
        out = jax.jit(lambda a: losses.koleo_loss_sharded(a, mesh))(xs)
        print(json.dumps({"devices": jax.device_count(), "loss": np.asarray(out).tolist()}))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps(x.tolist()), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    expected = [np.mean([_reference_koleo(shard) for shard in np.split(chunk, 8)]) for chunk in x]
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    assert not np.allclose(expected, [_reference_koleo(chunk) for chunk in x])


def _reference_semi_supervised(logits, labels, weighting, class_weights=None, temp=0.1, smoothing=0.1):
    """MM-DINOv2's loss with torch's F.cross_entropy as the oracle (probability targets, class weights)."""
    labeled = labels != -1
    n_lab, k = int(labeled.sum()), logits.shape[-1]
    if n_lab == 0:
        return 0.0
    onehot = F.one_hot(torch.as_tensor(labels[labeled]), k).double()
    if weighting == "batch":
        weight = torch.log(n_lab / (onehot.sum(0) + 1e-6))
    elif weighting == "dataset":
        weight = torch.as_tensor(class_weights, dtype=torch.float64)
    else:
        weight = None
    chunk_losses = [
        F.cross_entropy(torch.as_tensor(z[labeled]) / temp, onehot, weight=weight, label_smoothing=smoothing)
        for z in logits
    ]
    return float(torch.stack(chunk_losses).mean()) * n_lab / len(labels)


@pytest.mark.parametrize(
    "labels,weighting",
    [
        ([0, 2, -1, 1, 2, -1, 0, 2], "batch"),
        ([1, 1, -1, 1, -1, -1, 3, 1], "batch"),  # K=4, class 0 and 2 absent from the batch
        ([0, 2, -1, 1, 2, -1, 0, 3], "dataset"),
        ([0, 2, -1, 1, 2, -1, 0, 3], "none"),
        ([2, 2, 2, 2, 2, 2, 2, 2], "batch"),
        ([-1] * 8, "batch"),
    ],
)
def test_semi_supervised_loss_matches_torch(labels, weighting):
    labels = np.asarray(labels)
    logits = RNG.normal(size=(10, len(labels), 4))
    class_weights = np.array([0.5, 1.2, 0.9, 2.0]) if weighting == "dataset" else None
    loss = jax.jit(losses.semi_supervised_loss, static_argnames="weighting")
    got = loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), class_weights=class_weights,
               weighting=weighting)
    expected = _reference_semi_supervised(logits, labels, weighting, class_weights)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_semi_supervised_loss_rejects_bad_weighting():
    logits, labels = jnp.zeros((1, 2, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="needs class_weights"):
        losses.semi_supervised_loss(logits, labels, weighting="dataset")
    with pytest.raises(ValueError, match="weighting must be"):
        losses.semi_supervised_loss(logits, labels, weighting="inverse")

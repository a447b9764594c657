"""The multi-crop on the device (`data.augment_on = device`): the same crops as the host's, through the pipeline
and the train step."""

import jax
import numpy as np
import pytest
from test_pipeline import cache  # noqa: F401  (the module-scoped prepared cache)

from mmdino_jax.config_base import load_config
from mmdino_jax.data.augment import CropConfig, multi_crop, multi_crop_operators
from mmdino_jax.data.pipeline import CachedSplit, host_batch, train_dataset
from mmdino_jax.finetune.learner import labeled_crops
from mmdino_jax.sharding import make_mesh
from mmdino_jax.ssl.learner import build_learner
from mmdino_jax.training import device_crops
from mmdino_jax.training.sharded import shard_learner

SEQUENCES = ("t2", "flair", "t1", "t1c")


def assert_same_crops(device: np.ndarray, host: np.ndarray):
    """Equal to float32 rounding, but for the rare pixel whose blur tail underflows on one side of float32's
    smallest normal number and not on the other: background (0) there, foreground (-mean / std) here."""
    flipped = np.abs(device - host) > 1e-4
    assert flipped.mean() < 1e-5, f"{flipped.sum()} of {flipped.size} pixels differ"
    np.testing.assert_allclose(np.where(flipped, host, device), host, atol=2e-5)


def test_device_crops_equal_the_host_crops(cache):  # noqa: F811
    data = CachedSplit(cache, "train")
    expand = jax.jit(device_crops.expand_crops)
    cfg = CropConfig()
    draws = {"flip": 0, "blur": 0, "gamma": 0}
    for seed, row in enumerate(np.linspace(0, len(data.axis) - 1, 24).astype(int)):
        image, mask = data.slice(row)
        present = np.array([True, seed % 3 > 0, True, seed % 4 > 0])
        host = multi_crop(image, mask, present, cfg, np.random.default_rng(seed))
        ops = multi_crop_operators(mask, cfg, np.random.default_rng(seed))
        cols = ops["local_cols"]  # a flipped crop's first column reads the right of its box
        draws["flip"] += int((cols[:, 0].argmax(-1) > cols[:, -1].argmax(-1)).sum())
        draws["blur"] += int((ops["local_blur"][:, 0, 1] > 0).sum())
        draws["gamma"] += int((ops["global_gamma"] > 0).sum())
        batch = {"image": image[None].astype(np.float16), "present": present[None],
                 **{k: v[None] for k, v in ops.items()}}
        out = expand(batch)
        assert set(out) == {"global", "local", "present"}
        for family, crops in zip(("global", "local"), host):
            assert_same_crops(np.asarray(out[family][0]), crops)
    assert all(draws.values()), draws  # the crops exercised every optional augmentation


def test_the_pipeline_sends_slices_and_operators_drawn_as_the_host_crops(cache):  # noqa: F811
    kwargs = dict(sequences=SEQUENCES, batch_size=4, seed=3, min_tumour_voxels=5, labeled_fraction=0.5)
    host = host_batch(next(iter(train_dataset(cache, **kwargs))))
    device = host_batch(next(iter(train_dataset(cache, crops_on_device=True, **kwargs))))
    assert {k: (v.shape, v.dtype) for k, v in device.items() if k not in ("present", "label")} == {
        "image": ((4, 4, 96, 96), np.float16),
        "global_rows": ((4, 2, 98, 96), np.float32), "global_cols": ((4, 2, 98, 96), np.float32),
        "global_blur": ((4, 2, 98, 98), np.float32), "global_gamma": ((4, 2), np.float32),
        "local_rows": ((4, 8, 56, 96), np.float32), "local_cols": ((4, 8, 56, 96), np.float32),
        "local_blur": ((4, 8, 56, 56), np.float32), "local_gamma": ((4, 8), np.float32)}
    np.testing.assert_array_equal(device["label"], host["label"])
    np.testing.assert_array_equal(device["present"], host["present"])
    crops = jax.jit(device_crops.expand_crops)(device)
    for family in ("global", "local"):
        assert_same_crops(np.asarray(crops[family]), host[family])


def test_the_train_step_makes_the_crops(cache):  # noqa: F811
    config = load_config("configs/demo.py:smoke")
    config.data.sequences = ",".join(SEQUENCES)
    config.data.batch_size = 4
    kwargs = dict(sequences=SEQUENCES, batch_size=4, seed=0, min_tumour_voxels=5, global_size=56, local_size=28,
                  local_crops=config.data.local_crops_number)
    config.data.global_crops_size, config.data.local_crops_size = 56, 28
    losses = []
    for on_device in (False, True):
        run = shard_learner(build_learner(config), make_mesh(1, jax.devices()[:1]))
        batch = host_batch(next(iter(train_dataset(cache, crops_on_device=on_device, **kwargs))))
        _, metrics = run.step(run.state, run.global_batch(batch), run.key(0))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_augment_on_resolves_per_backend_and_rejects_other_values():
    assert device_crops.on_device("auto", "cpu") is False
    assert device_crops.on_device("auto", "gpu") is True and device_crops.on_device("auto", "tpu") is True
    assert device_crops.on_device("host", "gpu") is False and device_crops.on_device("device", "cpu") is True
    with pytest.raises(ValueError, match="data.augment_on must be one of auto, device, host, not 'gpu'"):
        device_crops.on_device("gpu")


def test_device_crops_refuse_another_normalisation():
    with pytest.raises(ValueError, match="set data.augment_on=host"):
        multi_crop_operators(np.ones((96, 96), bool), CropConfig(mean=0.5), np.random.default_rng(0))


def test_fine_tuning_keeps_the_global_crops_operators_only(cache):  # noqa: F811
    batch = next(iter(train_dataset(cache, sequences=SEQUENCES, batch_size=2, seed=0, min_tumour_voxels=5,
                                    crops_on_device=True)))
    assert set(labeled_crops(batch)) == {"image", "present", "label", *device_crops.operator_keys("global")}

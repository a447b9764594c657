"""A run's data: its prepared cache (made once, by process 0) and this process's Grain training batches."""

from __future__ import annotations

import jax
import jax.experimental.multihost_utils

from mmdino_jax.data import pipeline
from mmdino_jax.data.setup import ensure_cache
from mmdino_jax.training import device_crops


def prepared_cache(config, workdir: str):
    """The run's prepared data cache; process 0 prepares it while the others wait."""
    if jax.process_index() == 0:
        ensure_cache(config.data, workdir, config.seed)
    jax.experimental.multihost_utils.sync_global_devices("cache ready")
    return ensure_cache(config.data, workdir, config.seed)


def crop_settings(data_cfg) -> dict:
    """`augment.CropConfig` fields from `config.data`."""
    d = data_cfg
    return dict(global_size=d.global_crops_size, global_scale=tuple(d.global_crops_scale),
                local_crops=d.local_crops_number, local_size=d.local_crops_size, local_scale=tuple(d.local_crops_scale))


def train_dataset(config, cache, process_index: int | None = None, process_count: int | None = None):
    """The Grain dataset of training batches of one process (default: this one)."""
    d = config.data
    return pipeline.train_dataset(
        cache, sequences=d.sequences.split(","), batch_size=d.batch_size, seed=config.seed,
        labeled_fraction=None if d.labeled_fraction < 0 else d.labeled_fraction,
        label_keep_fraction=d.label_keep_fraction,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
        num_workers=d.workers, min_tumour_voxels=d.min_tumour_voxels,
        crops_on_device=device_crops.on_device(d.augment_on), **crop_settings(d))

"""Checks made before any work: a training config, the run directory and output paths, each failing with one
line that names the field and the fix (``ConfigError``) or the path (``WorkdirError``)."""

from __future__ import annotations

import os
from pathlib import Path

from mmdino_jax.cli_errors import ConfigError, WorkdirError
from mmdino_jax.constants import sequence_indices
from mmdino_jax.models.vit import _PRESETS

AUGMENT_ON = ("auto", "device", "host")  # `training/device_crops.on_device`
POSITIVE_FIELDS = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "data.batch_size",
                   "optim.grad_accum_steps", "eval.batch_size")


def _get(config, dotted: str):
    """``config.a.b`` for "a.b"; None when the config has no such field."""
    for part in dotted.split("."):
        if part not in config:
            return None
        config = config[part]
    return config


def check_workdir(workdir) -> str:
    """The run directory (created if absent); WorkdirError if it is a file or cannot be created. URLs
    (gs://...) are left to Orbax."""
    if not workdir:
        raise WorkdirError("--workdir is required: the directory for checkpoints, metrics and the cache")
    if "://" in str(workdir):
        return str(workdir)
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory; pass a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(f"cannot create --workdir {workdir}: {err.strerror}") from err
    return str(path)


def check_train_config(config, device_count: int) -> None:
    """ConfigError for values no run can use: non-positive counts, a batch the devices cannot split, an
    unknown architecture, sequence or augmentation place, a data root or labels file that does not exist."""
    if config is None:
        raise ConfigError("--config is required, e.g. --config configs/demo.py")
    for name in POSITIVE_FIELDS:
        value = _get(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"config.{name} = {value} must be >= 1")
    batch = _get(config, "data.batch_size")
    if batch is not None and batch % device_count:
        raise ConfigError(f"config.data.batch_size = {batch} is not divisible by the {device_count} devices; "
                          f"use a multiple of {device_count}")
    arch = _get(config, "model.arch")
    if arch is not None and arch not in _PRESETS:
        raise ConfigError(f"config.model.arch = {arch!r} is unknown; choose from {', '.join(_PRESETS)}")
    augment_on = _get(config, "data.augment_on")
    if augment_on is not None and augment_on not in AUGMENT_ON:
        raise ConfigError(f"config.data.augment_on = {augment_on!r} is unknown; choose from {', '.join(AUGMENT_ON)}")
    sequences = _get(config, "data.sequences")
    if sequences is not None:
        try:
            sequence_indices(sequences)
        except ValueError as err:
            raise ConfigError(f"config.data.sequences = {sequences!r}: {err}") from None
    for name, is_ok, what in (("data.root", Path.is_dir, "directory"), ("data.labels_csv", Path.is_file, "file")):
        value = _get(config, name)
        if value and not is_ok(Path(value).expanduser()):
            raise ConfigError(f"config.{name} = {value!r}: no such {what}; fix the path (or leave it empty)")


def check_output_file(path, flag: str) -> None:
    """WorkdirError unless ``path`` can be written; checked before the work whose result it will hold."""
    target = Path(path)
    if target.is_dir():
        raise WorkdirError(f"{flag} {path} is a directory; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise WorkdirError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise WorkdirError(f"{flag} {path} is not writable; choose another location")


def check_output_dir(path, flag: str) -> Path:
    """Create ``path`` (a folder for outputs) now, so that an unusable one fails before any work."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise WorkdirError(f"{flag} {path} is a file; give a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(f"{flag} {path} cannot be created ({err.strerror}); choose another location") from None
    if not os.access(target, os.W_OK):
        raise WorkdirError(f"{flag} {path} is not writable; choose another location")
    return target

"""Schema of a classifier artifact: classifier.json and probe.npz, checked against each other and against the
backbone's model.json before any weight is read. Each problem is one ArtifactError naming the file and key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mmdino_jax.cli_errors import UserError
from mmdino_jax.constants import CLASS_NAMES, sequence_indices

REEXPORT = "re-export the classifier (python -m mmdino_jax.evaluate ... --export DIR)"


class ArtifactError(UserError, ValueError):
    """An artifact directory that cannot be used; the message says what is wrong and how to fix it."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _number(value) and value > 0


def check_document(doc: dict[str, Any], file: Path) -> None:
    """Types and ranges of classifier.json's class_names, sequences, preprocessing and batch_size."""
    names = doc["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ArtifactError(f"{file}: class_names must be a list of distinct names, got {names!r}; {REEXPORT}")
    if len(names) != len(CLASS_NAMES):
        raise ArtifactError(f"{file}: class_names lists {len(names)} classes, the model predicts {len(CLASS_NAMES)} "
                            f"({', '.join(CLASS_NAMES)}); {REEXPORT}")
    sequences = doc["sequences"]
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise ArtifactError(f"{file}: sequences must be a list of names such as [\"t2\", \"flair\"], got "
                            f"{sequences!r}; {REEXPORT}")
    try:
        sequence_indices(sequences)
    except ValueError as err:
        raise ArtifactError(f"{file}: {err}") from None
    prep = doc["preprocessing"]
    if not isinstance(prep, dict):
        raise ArtifactError(f"{file}: preprocessing must be an object, got {prep!r}; {REEXPORT}")
    for key, ok, want in (("size", lambda v: isinstance(v, int) and v > 0, "a positive integer"),
                          ("mean", _number, "a number"), ("std", _positive, "a positive number"),
                          ("spacing_mm", _positive, "a positive number")):
        if key not in prep:
            raise ArtifactError(f"{file} lacks preprocessing.{key}; {REEXPORT}")
        if not ok(prep[key]):
            raise ArtifactError(f"{file}: preprocessing.{key} = {prep[key]!r} must be {want}; {REEXPORT}")
    if not (isinstance(doc["batch_size"], int) and doc["batch_size"] > 0):
        raise ArtifactError(f"{file}: batch_size = {doc['batch_size']!r} must be a positive integer; {REEXPORT}")


def check_backbone(doc: dict[str, Any], backbone_meta: dict[str, Any], file: Path, backbone_file: Path) -> None:
    """The artifact's sequences and view size fit the backbone (its model.json)."""
    saved = backbone_meta.get("sequences")
    if saved is not None and list(saved) != doc["sequences"]:
        raise ArtifactError(f"{file}: sequences {doc['sequences']} differ from the backbone's {saved} "
                            f"({backbone_file}); {REEXPORT}")
    patch = backbone_meta.get("config", {}).get("patch_size", 14)
    if doc["preprocessing"]["size"] % patch:
        raise ArtifactError(f"{file}: preprocessing.size {doc['preprocessing']['size']} is not a multiple of the "
                            f"backbone's patch size {patch}; {REEXPORT}")


def check_probe(probe, n_features: int, n_classes: int, file: Path, pooling: str = "cls") -> None:
    """Shapes of probe.npz against each other, the backbone's features (`n_features` of its `pooling`: the
    embed_dim for CLS) and the class list; finite, scale > 0."""
    shapes = {k: np.shape(getattr(probe, k)) for k in ("coef", "intercept", "mean", "scale", "classes")}
    listing = ", ".join(f"{k} {v}" for k, v in shapes.items())
    k = shapes["classes"][0] if len(shapes["classes"]) == 1 else -1
    dims = {shapes["mean"][-1:], shapes["scale"][-1:], shapes["coef"][-1:]}
    if (len(shapes["coef"]) != 2 or shapes["intercept"] != (k,) or shapes["coef"][0] != k or len(dims) != 1
            or len(shapes["mean"]) != 1 or len(shapes["scale"]) != 1):
        raise ArtifactError(f"{file} is inconsistent ({listing}): expected coef (K, D), intercept (K,), mean (D,), "
                            f"scale (D,), classes (K,); {REEXPORT}")
    if shapes["mean"][0] != n_features:
        has = "embed_dim is" if pooling == "cls" else f"{pooling} features have"
        raise ArtifactError(f"{file} takes {shapes['mean'][0]}-dimensional features, but the backbone's {has} "
                            f"{n_features}: probe and backbone come from different runs; {REEXPORT}")
    classes = np.asarray(probe.classes)
    if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= n_classes \
            or len(np.unique(classes)) != len(classes):
        raise ArtifactError(f"{file}: classes {classes.tolist()} must be distinct labels in 0..{n_classes - 1} "
                            f"(classifier.json names {n_classes} classes); {REEXPORT}")
    for name in ("coef", "intercept", "mean", "scale"):
        if not np.isfinite(getattr(probe, name)).all():
            raise ArtifactError(f"{file}: {name} holds NaN or inf; {REEXPORT}")
    if not (np.asarray(probe.scale) > 0).all():
        raise ArtifactError(f"{file}: scale has {int((np.asarray(probe.scale) <= 0).sum())} value(s) <= 0 "
                            f"(a division by zero); {REEXPORT}")

"""Self-contained glioma-subtype classifier: backbone + linear classifier + preprocessing settings.

An artifact directory (written by ``python -m mmdino_jax.evaluate ... --export DIR`` and by
``python -m mmdino_jax.finetune``, read by ``python -m mmdino_jax.predict --model DIR``):

- ``backbone/``       the backbone as a model directory (``model_io``: model.json + Orbax state): a run's
                      teacher, or a fine-tuned backbone (LoRA adapters merged into the kernels).
- ``probe.npz``       the linear classifier as a :class:`Probe` (plain arrays, no pickle): the
                      logistic-regression probe, or the fine-tuned head (mean 0, scale 1).
- ``classifier.json`` format, version, class names, sequences (input channel order), preprocessing,
                      the evaluation's batch size, the training config and the step it came from;
                      ``probe.pooling`` names the classifier's input (``models.heads.POOLINGS``: the CLS
                      token, or CLS + mean patch token); artifacts without it use the CLS token.
- ``SHA256SUMS``      checksums of all of the above (``checksums``): a corrupt artifact is refused.

Loading checks the schema (``export_schema``) of classifier.json and probe.npz against each other and the
backbone before reading any weight, then the checksums.

Prediction at the evaluation's batch size reproduces evaluation bit for bit: XLA's float32 rounding
depends on the batch shape, and the probe's standardisation can magnify a 1-ulp feature difference.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from mmdino_jax import checksums
from mmdino_jax.constants import CLASS_NAMES, sequence_indices
from mmdino_jax.data.augment import MEAN, STD
from mmdino_jax.data.pipeline import AXIAL
from mmdino_jax.data.prepare import CROP
from mmdino_jax.eval.probe import Probe
from mmdino_jax.export_schema import ArtifactError, check_backbone, check_document, check_probe
from mmdino_jax.models import io as model_io
from mmdino_jax.models.heads import POOLINGS, pooled_dim
from mmdino_jax.models.vit import DinoViT

FORMAT = "mmdino_jax.classifier"
VERSION = 2  # 2: preprocessing.spacing_mm (physical field of view)
SLICE_RULE = "largest axial tumour slice"
HOW_TO_EXPORT = "export one with `python -m mmdino_jax.evaluate --config CFG --workdir RUN --export DIR`"

__all__ = ["ArtifactError", "Classifier", "export_classifier", "check_export_dir", "load_classifier"]
log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A loaded artifact: backbone, probe and the contents of classifier.json."""

    backbone: DinoViT
    probe: Probe
    meta: dict[str, Any]

    @property
    def sequences(self) -> list[str]:
        return self.meta["sequences"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.meta["preprocessing"]

    @property
    def pooling(self) -> str:
        """The classifier's input features (``models.heads.POOLINGS``)."""
        return pooling_of(self.meta)

    @property
    def batch_size(self) -> int:
        """The batch size evaluation extracted features with."""
        return int(self.meta["batch_size"])


def pooling_of(doc: dict[str, Any]) -> str:
    """classifier.json's ``probe.pooling``; "cls" for artifacts written before it existed."""
    probe = doc.get("probe")
    return probe.get("pooling", "cls") if isinstance(probe, dict) else "cls"


def preprocessing(eval_size: int, spacing: float) -> dict[str, Any]:
    """The evaluation view's settings (``pipeline.eval_arrays``) that prediction must repeat."""
    return {"slice": SLICE_RULE, "axis": AXIAL, "orientation": "RAS (nibabel as_closest_canonical)",
            "crop": CROP, "spacing_mm": float(spacing), "crop_centre": "tumour centre of mass on the slice",
            "scaling": "1st/99th percentile of the crop -> [0, 1], stored as float16", "size": int(eval_size),
            "resize": "bicubic antialiased", "mean": MEAN, "std": STD}


def check_export_dir(out_dir, overwrite: bool = False) -> Path:
    """FileExistsError (before any work) unless ``out_dir`` can receive an artifact: it must not hold one,
    unless ``overwrite``, and must not be a file or a non-empty directory of something else."""
    out = Path(out_dir).absolute()
    if (out / "classifier.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a classifier; choose a new directory, delete it, "
                                  "or pass --overwrite")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory or a classifier; choose a new directory")
    return out


def export_classifier(out_dir, backbone_def, params, probe: Probe, config, step: int, sequences,
                      overwrite: bool = False, pooling: str = "cls", head: dict | None = None) -> Path:
    """Write the artifact to ``out_dir``, which must not hold one already unless ``overwrite`` (the old one is then
    replaced); returns its path. ``probe`` classifies the ``pooling`` features of the backbone; ``head``
    describes it in classifier.json (default: the evaluation's logistic-regression probe on teacher features)."""
    out = check_export_dir(out_dir, overwrite)
    if (out / "classifier.json").exists():
        shutil.rmtree(out)
    sequences = list(sequences.split(",") if isinstance(sequences, str) else sequences)
    sequence_indices(sequences)
    backbone = nnx.merge(backbone_def, params)
    if probe.mean.shape[0] != pooled_dim(backbone.cfg.embed_dim, pooling):
        raise ValueError(f"probe has {probe.mean.shape[0]} features, {pooling} features of the backbone "
                         f"have {pooled_dim(backbone.cfg.embed_dim, pooling)}")
    head = head or {"c": float(probe.c), "features": "teacher CLS", "source": "mmdino_jax.evaluate --export"}
    provenance = {"source": head["source"], "step": int(step)}
    model_io.save_model(out / "backbone", backbone, meta={"sequences": sequences, "provenance": provenance})
    probe.save_npz(out / "probe.npz")
    doc = {"format": FORMAT, "version": VERSION, "class_names": list(CLASS_NAMES), "sequences": sequences,
           "preprocessing": preprocessing(config.data.eval_size, config.data.spacing),
           "batch_size": int(config.eval.batch_size),
           "step": int(step),
           "probe": {**head, "pooling": pooling},
           "config": json.loads(config.to_json_best_effort())}
    (out / "classifier.json").write_text(json.dumps(doc, indent=2) + "\n")
    checksums.write_manifest(out)
    return out


def read_classifier_json(path: Path) -> dict[str, Any]:
    """classifier.json of an artifact directory, checked for format, version and the files it needs."""
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist; {HOW_TO_EXPORT}")
    file = path / "classifier.json"
    if not file.is_file():
        raise ArtifactError(f"{file} not found: {path} is not a classifier artifact; {HOW_TO_EXPORT}")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{file} is not valid JSON ({err}); re-export the classifier") from err
    if not isinstance(doc, dict):
        raise ArtifactError(f"{file} holds a {type(doc).__name__}, not a JSON object; re-export the classifier")
    if doc.get("format") != FORMAT:
        raise ArtifactError(f"{file} has format {doc.get('format')!r}, expected {FORMAT!r}; {HOW_TO_EXPORT}")
    if doc.get("version") != VERSION:
        raise ArtifactError(f"{file} is version {doc.get('version')!r}, this mmdino_jax reads version {VERSION}; "
                            "re-export it with this version (or use the mmdino_jax that wrote it)")
    missing = [k for k in ("class_names", "sequences", "preprocessing", "batch_size") if k not in doc]
    prep = doc.get("preprocessing")
    missing += [f"preprocessing.{k}" for k in ("spacing_mm",) if isinstance(prep, dict) and k not in prep]
    if missing:
        raise ArtifactError(f"{file} lacks {missing}; re-export the classifier")
    check_document(doc, file)
    if doc["preprocessing"].get("crop") != CROP or doc["preprocessing"].get("axis") != AXIAL:
        raise ArtifactError(f"{file} was made with crop {doc['preprocessing'].get('crop')} on axis "
                            f"{doc['preprocessing'].get('axis')}; this mmdino_jax crops {CROP} px on axis {AXIAL}")
    if pooling_of(doc) not in POOLINGS:
        raise ArtifactError(f"{file}: probe.pooling {pooling_of(doc)!r} is not one of {POOLINGS}; "
                            "re-export the classifier")
    for name, hint in (("probe.npz", "the probe"), ("backbone/model.json", "the backbone")):
        if not (path / name).is_file():
            raise ArtifactError(f"{path / name} not found: the artifact lacks {hint}; re-export the classifier")
    return doc


def load_classifier(path) -> Classifier:
    """Load an artifact directory; ArtifactError names what does not fit."""
    path = Path(path).expanduser().absolute()
    doc = read_classifier_json(path)
    try:
        backbone_meta = model_io.read_meta(path / "backbone")
        embed_dim = int(backbone_meta["config"]["embed_dim"])
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{path / 'backbone' / 'model.json'} is broken ({err}); re-export the classifier") from None
    check_backbone(doc, backbone_meta, path / "classifier.json", path / "backbone" / "model.json")
    try:
        probe = Probe.load_npz(path / "probe.npz")
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"cannot read {path / 'probe.npz'} ({err}); re-export the classifier") from err
    pooling = pooling_of(doc)
    check_probe(probe, pooled_dim(embed_dim, pooling), len(doc["class_names"]), path / "probe.npz", pooling)
    if not (path / "backbone" / "state").is_dir():
        raise ArtifactError(f"{path / 'backbone' / 'state'} not found: the artifact lacks the backbone weights; "
                            "re-export the classifier")
    if not checksums.has_manifest(path):
        log.warning("%s has no %s (exported before checksums): its integrity cannot be checked",
                    path, checksums.MANIFEST)
    elif problems := checksums.manifest_problems(path):
        raise ArtifactError(f"{path} is corrupt: {'; '.join(problems[:3])}; re-export the classifier")
    backbone, _, _ = model_io.load_model(path / "backbone")
    return Classifier(backbone, probe, doc)

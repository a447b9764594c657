"""Find the subjects of an MRI cohort on disk: image paths per sequence, segmentation, split and label.

Supported layouts (``layout`` argument of :func:`discover`; ``<root>[/<split>]`` is the root itself, or each
of its ``train/``, ``val/``, ``test/`` folders when it has any):

- ``mmdino``:    ``<root>[/<split>]/<ID>/preop/sub-<ID>_ses-preop_space-sri_{t1,t1c,t2,flair,seg}.nii.gz``,
  labels from ``<root>/phenoData.csv`` (``Patient``, ``WHO2021_Int``) unless another CSV is given.
- ``brats2021``: ``<root>[/<split>]/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``.
- ``brats2023``: ``<root>[/<split>]/BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
- ``ucsf-pdgm``: ``<root>[/<split>]/UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_{T1,T1c,T2,FLAIR,tumor_segmentation}.nii.gz``.
- ``egd``:       ``<root>[/<split>]/SUBJECTS/EGD-0001/{T1,T1GD,T2,FLAIR,MASK}.nii.gz``.

Labels are matched to subject ids after lower-casing and dropping leading zeros of numbers, so the UCSF-PDGM
metadata id ``UCSF-PDGM-004`` matches the directory ``UCSF-PDGM-0004_nifti``. The same key names one subject:
two folders with one key (``0002`` and ``002``, or one id in two splits) are refused, as train would leak into
test. An image file that is a broken (dangling or looping) symbolic link counts as missing, with a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mmdino_jax.constants import CLASS_NAMES, SEQUENCES, UNLABELED
from mmdino_jax.data.blank import blank_note

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """How one dataset names its subject folders and files."""

    glob: str  # subject folders, relative to <root>[/<split>]
    files: dict[str, str]  # sequence name or "seg" -> file path inside the subject folder ({id} = subject id)
    id_suffix: str = ""  # folder name = id + id_suffix
    labels: tuple[str, str, str] | None = None  # default (CSV file under root, id column, label column)


LAYOUTS = {
    "mmdino": Layout(
        glob="*",
        files={s: f"preop/sub-{{id}}_ses-preop_space-sri_{s}.nii.gz" for s in (*SEQUENCES, "seg")},
        labels=("phenoData.csv", "Patient", "WHO2021_Int"),
    ),
    "brats2021": Layout(
        glob="BraTS2021_*",
        files=dict(zip((*SEQUENCES, "seg"), (f"{{id}}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")))),
    ),
    "brats2023": Layout(
        glob="BraTS-*",
        files=dict(zip((*SEQUENCES, "seg"), (f"{{id}}-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg")))),
    ),
    "ucsf-pdgm": Layout(
        glob="*_nifti",
        files=dict(zip((*SEQUENCES, "seg"),
                       (f"{{id}}_{s}.nii.gz" for s in ("T1", "T1c", "T2", "FLAIR", "tumor_segmentation")))),
        id_suffix="_nifti",
    ),
    "egd": Layout(
        glob="SUBJECTS/*",
        files=dict(zip((*SEQUENCES, "seg"), (f"{s}.nii.gz" for s in ("T1", "T1GD", "T2", "FLAIR", "MASK")))),
    ),
}


@dataclass(frozen=True)
class Subject:
    """One subject: image path per canonical sequence (None = missing), segmentation path, label (-1 = none),
    and notes on what was found wrong but worked around (a broken link, a blank sequence)."""

    id: str
    split: str
    images: dict[str, Path | None]
    seg: Path | None
    label: int = UNLABELED
    notes: tuple[str, ...] = ()

    @property
    def present(self) -> tuple[bool, ...]:
        """Presence of each sequence of ``constants.SEQUENCES``."""
        return tuple(self.images[s] is not None for s in SEQUENCES)


def without(subject: Subject, blank: list[str]) -> Subject:
    """The subject with its ``blank`` sequences treated as missing, and a note saying so."""
    if not blank:
        return subject
    images = {s: None if s in blank else p for s, p in subject.images.items()}
    return replace(subject, images=images, notes=(*subject.notes, blank_note(blank)))


def broken_link(path: Path) -> bool:
    """A symbolic link whose target does not exist, or that loops."""
    return path.is_symlink() and not path.exists()


def match_key(subject_id: str) -> str:
    """Id used to match CSV rows to folders: lower case, numbers without leading zeros."""
    return re.sub(r"\d+", lambda m: str(int(m.group())), str(subject_id).strip().lower())


def _split_roots(root: Path) -> list[tuple[str, Path]]:
    roots = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    return roots or [("train", root)]


def _read_labels(csv: Path, id_column: str | None, label_column: str) -> dict[str, tuple[str, str]]:
    """CSV rows as {match_key(id): (id, raw label)}."""
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as err:
        raise ValueError(f"labels CSV {csv} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start}); save it as UTF-8") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"cannot read labels CSV {csv}: {err}") from err
    id_column = id_column or table.columns[0]
    for column in (id_column, label_column):
        if column not in table.columns:
            raise ValueError(f"labels CSV {csv} has no column {column!r}; its columns are {list(table.columns)}")
    keys = table[id_column].map(match_key)
    if keys.duplicated().any():
        twice = sorted(set(table.loc[keys.duplicated(keep=False), id_column]))
        raise ValueError(f"labels CSV {csv} lists subject(s) {twice[:5]} more than once; keep one row each")
    return dict(zip(keys, zip(table[id_column], table[label_column])))


def _parse_label(raw: str) -> int | None:
    """Label index from a CSV cell; -1 for empty/NaN; None when not an integer in 0..len(CLASS_NAMES)-1."""
    text = str(raw).strip()
    if text.lower() in ("", "nan", "na", "none"):
        return UNLABELED
    try:
        value = float(text)
    except ValueError:
        return None
    if not 0 <= value < len(CLASS_NAMES) or value != int(value):  # also inf and nan
        return None
    return int(value)


def discover(
    root: str | Path,
    layout: str,
    labels_csv: str | Path | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    for_prediction: bool = False,
) -> tuple[list[Subject], list[dict[str, str]]]:
    """Find the subjects under ``root``; returns (subjects, skipped) with skipped = [{"subject", "reason"}].

    A subject missing some sequences is kept (their paths are None). Subjects without any image, without a
    segmentation file, or with a label outside 0..2 are skipped, as are CSV rows naming no subject folder.
    ``id_column`` defaults to the layout's (``Patient`` for mmdino) or else the CSV's first column.
    ``for_prediction``: read no labels and keep subjects without a segmentation (``seg`` None).
    """
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise ValueError(f"cohort root {root} is not a directory")
    spec = LAYOUTS[layout]
    skipped: list[dict[str, str]] = []

    default_csv, default_id, default_label = spec.labels or (None, None, None)
    if for_prediction:
        labels_csv = None
    elif labels_csv is None and default_csv is not None and (root / default_csv).is_file():
        labels_csv = root / default_csv
    id_column, label_column = id_column or default_id, label_column or default_label
    labels: dict[str, tuple[str, str]] = {}
    if labels_csv is not None:
        if label_column is None:
            raise ValueError(f"labels CSV {labels_csv} given without a label column (--label-column)")
        labels = _read_labels(Path(labels_csv), id_column, label_column)

    subjects: list[Subject] = []
    seen: dict[str, Path] = {}
    clashes: list[str] = []
    for split, split_root in _split_roots(root):
        for folder in sorted(p for p in split_root.glob(spec.glob) if p.is_dir()):
            subject_id = folder.name.removesuffix(spec.id_suffix)
            key = match_key(subject_id)
            if key in seen:
                clashes.append(f"{seen[key]} and {folder}")
                continue
            seen[key] = folder
            paths = {name: folder / template.format(id=subject_id) for name, template in spec.files.items()}
            images = {s: paths[s] if paths[s].is_file() else None for s in SEQUENCES}
            notes = tuple(f"{s} file {paths[s].name} is a broken symbolic link (dangling or looping): treated as "
                          "missing; fix the link" for s in SEQUENCES if broken_link(paths[s]))
            if not any(images.values()):
                reason = "; ".join(notes) or (f"no image found (expected e.g. {paths[SEQUENCES[0]]}); "
                                              f"check --layout {layout}")
            elif broken_link(paths["seg"]) and not for_prediction:
                reason = (f"segmentation {paths['seg'].name} is a broken symbolic link (dangling or looping); "
                          "fix the link")
            elif not paths["seg"].is_file() and not for_prediction:
                reason = f"no segmentation {paths['seg']}; segment the tumour first"
            else:
                label = _parse_label(labels.get(key, ("", ""))[1])
                if label is None:
                    reason = (f"label {labels[key][1]!r} in {Path(labels_csv).name} is not one of "
                              f"0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)}); fix the row or leave it empty")
                else:
                    seg = paths["seg"] if paths["seg"].is_file() else None
                    subjects.append(Subject(subject_id, split, images, seg, label, notes))
                    continue
            skipped.append({"subject": subject_id, "reason": reason})
    if clashes:
        raise ValueError(f"{len(clashes)} subject(s) found twice under {root} (ids equal after lower-casing and "
                         f"dropping leading zeros; the same subject in two splits leaks train into test): "
                         f"{'; '.join(clashes[:3])}; keep one folder each")

    for key in sorted(set(labels) - set(seen)):
        reason = f"row in {Path(labels_csv).name} but no subject folder under {root}"
        skipped.append({"subject": labels[key][0], "reason": reason})
    return subjects, skipped


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Number of subjects per class name."""
    return {name: int(np.sum(np.asarray(labels) == i)) for i, name in enumerate(CLASS_NAMES)}

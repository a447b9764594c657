"""Predict the glioma subtype of new subjects with an exported classifier (``evaluate --export DIR``, or a
fine-tuned one from ``python -m mmdino_jax.finetune``).

    python -m mmdino_jax.predict --model DIR --input PATH [--layout mmdino] [--output results.csv|results.json]
        [--attention-maps OUTDIR] [--center x,y,z] [--batch-size N] [--slices K [--aggregate probs|features]]

PATH is a cohort root or one subject folder in any supported layout. Each subject goes through exactly the
evaluation view: largest axial tumour slice of the segmentation, resampled in-plane to the classifier's
spacing (1 mm unless trained otherwise), 96x96 crop around its tumour centre, percentile scaling, resize and
normalisation; sequences the subject lacks are masked as in training.
With ``--slices K`` a subject is the K largest tumour slices of each axis (evaluation's subject level,
``eval/multislice.py``): the mean of the probe's probabilities over them, or (``--aggregate features``) the probe
on their mean CLS feature; the attention maps show the largest axial slice.
Without a segmentation, ``--center x,y,z`` (0-based voxel coordinates of the image files, one subject) gives
the axial slice z and the crop centre (x, y). A subject that cannot be used gets a row with the reason; the
others are still predicted. Without ``--output`` the CSV goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmdino_jax.cli_errors import negative_values_attached, run_cli
from mmdino_jax.constants import SEQUENCES, sequence_indices
from mmdino_jax.data.augment import eval_view
from mmdino_jax.data.blank import blank_note
from mmdino_jax.data.cohort import LAYOUTS, Subject, discover
from mmdino_jax.data.pipeline import AXIAL
from mmdino_jax.data.prepare import SubjectError, crop_axis, read_images, read_subject, voxel_sizes
from mmdino_jax.eval import multislice
from mmdino_jax.eval.extract import FeatureExtractor, attention_maps
from mmdino_jax.eval.report import plot_attention_maps
from mmdino_jax.export import Classifier, load_classifier
from mmdino_jax.run_checks import check_output_dir, check_output_file

OUTPUT_FORMATS = (".csv", ".json")
NAN_FEATURES = "the backbone produced NaN/inf features for this subject; check the model's weights"


@dataclass
class View:
    """One subject's model input: images (M, S, size, size) (the first: its largest axial slice), present (S,)
    over the model's sequences."""

    subject: str
    images: np.ndarray
    present: np.ndarray
    axial_slice: int
    note: str = ""


def find_subjects(path: Path, layout: str) -> tuple[list[Subject], list[dict]]:
    """(subjects, skipped) of PATH as a cohort root, or else of PATH as one subject folder of ``layout``."""
    subjects, skipped = discover(path, layout, for_prediction=True)
    if subjects:
        return subjects, skipped
    spec = LAYOUTS[layout]
    depth = len(Path(spec.glob).parts)
    if len(path.parents) >= depth:
        subject_id = path.name.removesuffix(spec.id_suffix)
        found, lost = discover(path.parents[depth - 1], layout, for_prediction=True)
        mine = [s for s in found if s.id == subject_id and any(
            p is not None and p.is_relative_to(path) for p in s.images.values())]
        lost = [r for r in lost if r["subject"] == subject_id]
        if mine or lost:
            return mine, lost
    if skipped:
        return [], skipped
    raise ValueError(f"no {layout} subject in {path}, neither as a cohort root nor as a subject folder; "
                     f"check --input and --layout (layouts: {', '.join(LAYOUTS)})")


def parse_center(text: str) -> tuple[int, int, int]:
    """'x,y,z' -> three non-negative voxel indices."""
    try:
        centre = tuple(int(v) for v in text.split(","))
    except ValueError:
        centre = ()
    if len(centre) != 3 or min(centre) < 0:
        raise argparse.ArgumentTypeError(f"--center {text!r}: expected three voxel indices x,y,z >= 0, e.g. 60,72,40")
    return centre


def canonical_centre(image_path: Path, canonical_affine: np.ndarray, centre) -> tuple[int, int, int]:
    """Voxel ``centre`` of the file as stored -> the same voxel in the RAS-canonical grid that load_volume reads."""
    native = nib.load(image_path)
    if any(c >= n for c, n in zip(centre, native.shape)):
        raise SubjectError(f"--center {','.join(map(str, centre))} lies outside {image_path.name} "
                           f"of shape {native.shape[:3]}; give 0-based voxel indices")
    voxel = np.linalg.inv(canonical_affine) @ native.affine @ np.array([*centre, 1.0])
    return tuple(int(v) for v in np.rint(voxel[:3]))


def subject_crops(subject: Subject, spacing: float, centre=None, slices: int = 0
                  ) -> tuple[np.ndarray, int, int, list[str]]:
    """(crops (M, 4, 96, 96) float32 at ``spacing`` mm exactly as the cache holds them, axial slice index,
    non-finite voxels zeroed, blank sequences (``data.blank``, zeroed like missing ones)): the largest axial
    slice (M = 1), or with ``slices`` K > 0 the K largest tumour slices of each axis, the largest axial first.

    With ``centre`` the tumour mask is that single voxel, so the slice is its z and the crop is centred on it.
    """
    if centre is not None:
        volumes, affine, nonfinite, blank = read_images(subject)
        voxel_mm = voxel_sizes(affine)
        first = next(p for p in subject.images.values() if p is not None)
        mask = np.zeros(volumes.shape[1:], bool)
        mask[canonical_centre(first, affine, centre)] = True
    elif subject.seg is None:
        raise SubjectError("no segmentation file: segment the tumour, or pass --center x,y,z (voxel "
                           "coordinates of the tumour centre) with this subject's folder as --input")
    else:
        volumes, mask, nonfinite, voxel_mm, blank = read_subject(subject)
    # Only the largest slice passes this threshold: the row that evaluation reads (CachedSplit.largest_axial).
    crops, _, rows = crop_axis(volumes, mask, AXIAL, mask.size + 1, voxel_mm, spacing)
    if slices:
        crops = multislice.crop_largest_slices(volumes, mask, slices, voxel_mm, spacing)
    return crops.astype(np.float32), int(rows[0, 1]), nonfinite, blank


def subject_view(subject: Subject, clf: Classifier, centre=None, slices: int = 0) -> View:
    """The model input of one subject; SubjectError says why a subject cannot be used."""
    seq = list(sequence_indices(clf.sequences))
    present = np.asarray(subject.present)[seq]
    if not present.any():
        have = [s for s in SEQUENCES if subject.images[s] is not None]
        raise SubjectError(f"none of the model's sequences ({','.join(clf.sequences)}) found, only {have}")
    prep = clf.preprocessing
    crops, axial_slice, nonfinite, blank = subject_crops(subject, prep["spacing_mm"], centre, slices)
    present = present & np.array([s not in blank for s in clf.sequences])
    if not present.any():
        raise SubjectError(f"none of the model's sequences ({','.join(clf.sequences)}) is usable: {blank_note(blank)}")
    images = np.stack([eval_view(c[seq], present, prep["size"], prep["mean"], prep["std"]) for c in crops])
    notes = [*subject.notes, f"{nonfinite} non-finite voxels set to 0" if nonfinite else "", blank_note(blank)]
    return View(subject.id, images, present, axial_slice, "; ".join(n for n in notes if n))


def result_row(clf: Classifier, subject: str, probs=None, view: View | None = None, reason: str = "") -> dict:
    """One output row; ``probs`` None marks a subject that could not be predicted."""
    row = {"subject": subject, "status": "error" if probs is None else "ok",
           "prediction": None if probs is None else clf.class_names[int(np.argmax(probs))]}
    values = [None] * len(clf.class_names) if probs is None else [round(float(p), 6) for p in probs]
    row.update({f"p_{name}": p for name, p in zip(clf.class_names, values)})
    row["sequences"] = [] if view is None else [s for s, k in zip(clf.sequences, view.present) if k]
    row["axial_slice"] = None if view is None else view.axial_slice
    row["slices"] = None if view is None else len(view.images)
    row["reason"] = reason or (view.note if view else "")
    return row


def plot_subject(out_dir: Path, clf: Classifier, view: View, attn: np.ndarray, row: dict) -> Path:
    """PNG of the slice of each present sequence with the CLS attention over it."""
    used = np.flatnonzero(view.present)
    title = f"{row['prediction']} ({row['p_' + row['prediction']]:.2f})"
    return plot_attention_maps(out_dir / f"{view.subject}.png", view.images[:1, used], attn[None, used],
                               [title], [clf.sequences[i] for i in used])


def classify(clf: Classifier, extractor: FeatureExtractor, views: list[View], attend=None,
             attention_dir: Path | None = None, aggregate: str = "probs") -> list[dict]:
    """Rows of a batch of usable subjects (several slices each: combined by ``aggregate``, see
    multislice.subject_probs); with ``attend`` (:func:`attention_maps`), their PNGs too."""
    if not views:
        return []
    owner = np.repeat(np.arange(len(views)), [len(v.images) for v in views])
    present = np.stack([v.present for v in views])
    feats = extractor(np.concatenate([v.images for v in views]), present[owner])[clf.pooling]
    broken = np.zeros(len(views), bool)  # a NaN feature is a broken model, never a probability
    np.logical_or.at(broken, owner, ~np.isfinite(feats).all(axis=1))
    probs = [None] * len(views)
    if not broken.all():
        keep = ~broken[owner]
        good = np.flatnonzero(~broken)
        got = multislice.subject_probs(clf.probe, feats[keep], (np.cumsum(~broken) - 1)[owner[keep]], len(good),
                                       aggregate, len(clf.class_names))
        for i, p in zip(good, got):
            probs[i] = p
    rows = [result_row(clf, v.subject, view=v, reason=NAN_FEATURES) if p is None else result_row(clf, v.subject, p, v)
            for v, p in zip(views, probs)]
    if attend is not None:
        for v, a, row in zip(views, attend(np.stack([v.images[0] for v in views]), present), rows):
            plot_subject(attention_dir, clf, v, a, row)
    return rows


def try_view(subject: Subject, clf: Classifier, centre, slices: int = 0) -> View | dict:
    """The subject's View, or its error row."""
    try:
        return subject_view(subject, clf, centre, slices)
    except SubjectError as err:
        return result_row(clf, subject.id, reason=str(err))


def predict(clf: Classifier, subjects: list[Subject], centre=None, batch_size: int | None = None,
            attention_dir: Path | None = None, slices: int = 0, aggregate: str = "probs") -> list[dict]:
    """Rows (see :func:`result_row`) in the order of ``subjects``, ``batch_size`` subjects per forward pass
    (default: the evaluation's, which reproduces its probabilities exactly); ``slices`` K > 0: the subject
    level over the K largest tumour slices of each axis, combined by ``aggregate``."""
    batch_size = batch_size or clf.batch_size
    graphdef, params = nnx.split(clf.backbone)
    extractor = FeatureExtractor(graphdef, params, clf.sequences, batch_size, outputs=(clf.pooling,))
    attend = attention_maps(clf.backbone, clf.sequences) if attention_dir else None
    rows = []
    with tqdm(total=len(subjects), desc="predict", unit="subject") as progress:
        for start in range(0, len(subjects), batch_size):
            items = [try_view(s, clf, centre, slices) for s in subjects[start:start + batch_size]]
            good = [v for v in items if isinstance(v, View)]
            done = iter(classify(clf, extractor, good, attend, attention_dir, aggregate))
            rows += [next(done) if isinstance(v, View) else v for v in items]
            progress.update(len(items))
    return rows


def write_results(rows: list[dict], out, clf: Classifier, model_dir: Path) -> None:
    """CSV (sequences joined by '+') or JSON ({model, class_names, sequences, subjects}) to a path or stdout."""
    is_json = out is not None and Path(out).suffix == ".json"
    stream = sys.stdout if out is None else open(out, "w", newline="")
    try:
        if is_json:
            json.dump({"model": str(model_dir), "class_names": clf.class_names, "sequences": clf.sequences,
                       "subjects": rows}, stream, indent=2)
            stream.write("\n")
        else:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "sequences": "+".join(r["sequences"])} for r in rows)
    finally:
        if out is not None:
            stream.close()


def run(args) -> list[dict]:
    """Everything after argument parsing; ValueError (incl. ArtifactError) for unusable input."""
    if args.output:
        check_output_file(args.output, "--output")
    clf = load_classifier(args.model)
    path = Path(args.input).expanduser().absolute()
    subjects, skipped = find_subjects(path, args.layout)
    if args.center is not None and len(subjects) + len(skipped) > 1:
        raise ValueError(f"--center is one tumour centre, but {path} holds {len(subjects) + len(skipped)} "
                         "subjects; pass a single subject folder as --input")
    attention_dir = check_output_dir(args.attention_maps, "--attention-maps") if args.attention_maps else None
    rows = predict(clf, subjects, args.center, args.batch_size, attention_dir, args.slices, args.aggregate)
    rows += [result_row(clf, s["subject"], reason=s["reason"]) for s in skipped]
    write_results(rows, args.output, clf, Path(args.model))
    return rows


def main(argv=None) -> list[dict]:
    """The command line; errors end in one line and exit status 2 (``cli_errors``)."""
    return run_cli(_main, argv, prog="python -m mmdino_jax.predict")


def _main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="classifier directory (evaluate --export DIR)")
    parser.add_argument("--input", required=True, help="cohort root or one subject folder")
    parser.add_argument("--layout", default="mmdino", choices=sorted(LAYOUTS))
    parser.add_argument("--output", help="results file, .csv or .json (default: CSV to stdout)")
    parser.add_argument("--attention-maps", metavar="OUTDIR", help="write OUTDIR/<subject>.png attention maps")
    parser.add_argument("--center", type=parse_center, metavar="x,y,z",
                        help="tumour centre in voxels (one subject; replaces the segmentation)")
    parser.add_argument("--batch-size", type=int, help="subjects per forward pass (default: the evaluation's, "
                        "which reproduces its probabilities exactly; others change float32 rounding)")
    parser.add_argument("--slices", type=int, default=0, metavar="K",
                        help="subject level: the K largest tumour slices of each axis (default 0: the largest "
                             "axial slice, as evaluation's single-slice numbers)")
    parser.add_argument("--aggregate", choices=multislice.AGGREGATES, default="probs",
                        help="with --slices: mean of the probabilities (default) or probe on the mean feature")
    args = parser.parse_args(negative_values_attached(argv, ("--center",)))
    if args.output and Path(args.output).suffix not in OUTPUT_FORMATS:
        parser.error(f"--output {args.output}: use a .csv or .json file name")
    if args.slices < 0:
        parser.error(f"--slices must be >= 0, got {args.slices}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    rows = run(args)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"predicted {len(rows) - failed} subject(s), {failed} could not be used"
          + (f"; results: {args.output}" if args.output else ""), file=sys.stderr)
    return rows


def cli() -> None:
    """The console-script entry point (main's rows are for in-process callers)."""
    main()


if __name__ == "__main__":
    cli()

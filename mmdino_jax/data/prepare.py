"""Read a NIfTI cohort once and cache what training needs: 96x96 tumour crops of every tumour-bearing slice.

    python -m mmdino_jax.data.prepare --root ROOT --layout mmdino --output CACHE [--labels CSV --label-column COL]
        [--spacing MM]

Cache layout (all arrays memory-mappable, one sample = one row slice):

- ``CACHE/<split>/images.npy``  (N, 4, 96, 96) float16, sequences in ``constants.SEQUENCES`` order, each scaled
  by its 1st/99th percentile over the crop to [0, 1]; missing sequences are zeros.
- ``CACHE/<split>/seg.npy``     (N, 96, 96) uint8 BraTS labels 0 / 1 (necrotic core) / 2 (oedema) / 4 (enhancing);
  BraTS 2023's enhancing label 3 is stored as 4, and a binary mask stays 0 / 1 (tumour = seg > 0).
- ``CACHE/<split>/slices.npy``  (N, 4) int32 rows ``[subject, axis, slice index, tumour voxels]``, grouped by subject.
- ``CACHE/<split>/index.json``  ``ids``, ``labels``, ``present`` (per subject), the consolidation key and the
  cache ``version`` (``CACHE_VERSION``; readers refuse another).
- ``CACHE/parts/<split>/<id>.npz`` per-subject results (resume: a part whose input files are unchanged is reused).
- ``CACHE/report.json``         the crop spacing, kept / labeled / per-class counts, missing sequences, skipped
  subjects, NaN voxels, blank sequences (``data.blank``: all non-finite or constant inside the brain; cached as
  missing) and notes.

A slice is kept on an axis when it has >= ``--min-tumour-voxels`` tumour voxels; the largest slice of each axis is
always kept. Each kept slice is resampled in-plane to ``--spacing`` mm (default 1 mm, ``data/resample.py``), so
a crop spans 96 mm for any voxel size. The crop is centred on the slice's tumour centre of mass, shifted back
inside the image at borders, and zero-padded (after scaling) where the image is narrower than 96 mm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mmdino_jax.cli_errors import run_cli
from mmdino_jax.constants import SEQUENCES
from mmdino_jax.data import resample
from mmdino_jax.data.blank import blank_note, blank_sequences
from mmdino_jax.data.cohort import LAYOUTS, Subject, class_counts, discover, without

CROP = 96
DEFAULT_SPACING = 1.0  # mm per crop pixel: MM-DINOv2's inputs are 1 mm SRI24 images, so a crop spans 96 mm
CACHE_VERSION = 2  # 2: seg.npy holds the label values (1: a binary tumour mask)
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


class SubjectError(Exception):
    """A subject that cannot be used; the message is the report's reason."""


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(float32 3-D array, affine) in the closest canonical (RAS) orientation."""
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except READ_ERRORS as err:
        raise SubjectError(f"cannot read {path.name} ({type(err).__name__}: {err}); re-export the file") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SubjectError(f"{path.name} has shape {data.shape}, expected a 3-D volume")
    return data, image.affine


def read_images(subject: Subject, grid: tuple[tuple, np.ndarray, str] | None = None):
    """(volumes (4, X, Y, Z), affine, non-finite count, blank sequence names).

    Missing and blank sequences (``data.blank``) are zeros, as are non-finite voxels. Every sequence must lie on
    ``grid`` = (shape, affine, name of its file), by default the first present one's. SubjectError when no
    sequence is usable.
    """
    volumes = None
    for i, name in enumerate(SEQUENCES):
        if subject.images[name] is None:
            continue
        data, affine = load_volume(subject.images[name])
        grid = grid or (data.shape, affine, name)
        shape, grid_affine, grid_name = grid
        if data.shape != shape:
            raise SubjectError(f"{name} shape {data.shape} differs from {grid_name} shape {shape}; "
                               "resample all sequences to one grid")
        if not np.allclose(affine, grid_affine, atol=1e-3):
            raise SubjectError(f"{name} affine differs from the {grid_name} affine; "
                               "register all sequences to one space")
        if volumes is None:
            volumes = np.zeros((len(SEQUENCES), *shape), np.float32)
        volumes[i] = data
    if volumes is None:
        raise SubjectError("no image of any sequence")
    finite = np.isfinite(volumes).reshape(len(SEQUENCES), -1).sum(axis=1)
    loaded = [subject.images[name] is not None for name in SEQUENCES]
    nonfinite = int(volumes.size - finite.sum())
    np.nan_to_num(volumes, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    blank = blank_sequences(volumes, loaded, finite)
    if len(blank) == sum(loaded):
        raise SubjectError(f"no usable sequence: {blank_note(blank)}")
    for name in blank:
        volumes[SEQUENCES.index(name)] = 0.0
    return volumes, grid[1], nonfinite, blank


def seg_labels(seg: np.ndarray) -> np.ndarray:
    """Label volume as uint8 0/1/2/4 (rounded; BraTS 2023's enhancing tumour 3 becomes 4)."""
    labels = np.rint(np.clip(np.nan_to_num(seg, nan=0.0, posinf=0.0, neginf=0.0), 0, 255)).astype(np.uint8)
    labels[labels == 3] = 4
    return labels


def read_subject(subject: Subject) -> tuple[np.ndarray, np.ndarray, int, tuple[float, float, float], list[str]]:
    """(volumes (4, X, Y, Z) as :func:`read_images`, labels (X, Y, Z) uint8 (see ``seg_labels``), non-finite
    voxels zeroed, voxel size in mm per axis, blank sequence names); tumour = labels > 0."""
    seg, seg_affine = load_volume(subject.seg)
    volumes, _, nonfinite, blank = read_images(subject, (seg.shape, seg_affine, "seg"))
    nonfinite += int(np.count_nonzero(~np.isfinite(seg)))
    labels = seg_labels(seg)
    if not labels.any():
        raise SubjectError(f"segmentation {subject.seg.name} has no tumour voxel")
    return volumes, labels, nonfinite, voxel_sizes(seg_affine), blank


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of an image with this affine."""
    return tuple(float(v) for v in nib.affines.voxel_sizes(affine))


def scale_percentiles(crops: np.ndarray) -> np.ndarray:
    """Scale each (..., H, W) image so its 1st/99th percentiles map to 0/1, clipped to [0, 1]."""
    low, high = np.percentile(crops, [1, 99], axis=(-2, -1), keepdims=True)
    return np.clip((crops - low) / np.maximum(high - low, 1e-8), 0.0, 1.0)


def crop_slice(images: np.ndarray, plane: np.ndarray, voxel_mm: tuple[float, float] = (1.0, 1.0),
               spacing: float = DEFAULT_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """Tumour crop of one slice: images (4, H, W) and its labels (H, W) with in-plane voxel size ``voxel_mm``
    -> ((4, 96, 96) scaled, (96, 96) u8) at ``spacing`` mm, i.e. 96 * spacing mm wide.

    Percentiles are taken over the pixels that lie inside the scan; the padding stays zero."""
    centre = np.rint(ndimage.center_of_mass(plane > 0)).astype(int)
    rows, cols = (resample.axis_grid(c, n, v, spacing, CROP) for c, n, v in zip(centre, plane.shape, voxel_mm))
    sampled, out_seg = resample.resample_plane(images, plane.astype(np.uint8), rows, cols, voxel_mm, spacing)
    inside = (slice(None), slice(rows.start, rows.stop), slice(cols.start, cols.stop))
    out_images = np.zeros_like(sampled)
    out_images[inside] = scale_percentiles(sampled[inside])
    return out_images, out_seg


def crop_axis(volumes: np.ndarray, seg: np.ndarray, axis: int, min_voxels: int,
              voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0), spacing: float = DEFAULT_SPACING):
    """Tumour crops of one axis of a label (or bool tumour) volume: (images (n, 4, 96, 96) f16, seg (n, 96, 96)
    u8 labels, rows (n, 3) [axis, index, tumour voxels]).

    Slices are the scan's own (through-plane positions are not resampled); each is resampled in-plane to
    ``spacing`` mm. The tumour voxels are counted in the scan."""
    planes = np.moveaxis(seg, axis, 0)
    counts = np.count_nonzero(planes.reshape(planes.shape[0], -1), axis=1)
    keep = np.union1d(np.flatnonzero(counts >= min_voxels), [int(np.argmax(counts))])
    images = np.moveaxis(volumes, axis + 1, 1)
    in_plane = tuple(v for a, v in enumerate(voxel_mm) if a != axis)
    crops, segs = zip(*(crop_slice(images[:, index], planes[index], in_plane, spacing) for index in keep))
    rows = np.stack([np.full(len(keep), axis), keep, counts[keep]], axis=1).astype(np.int32)
    return np.stack(crops).astype(np.float16), np.stack(segs), rows


def fingerprint(subject: Subject, min_voxels: int, spacing: float) -> str:
    """Identity of a subject's inputs: file paths, sizes and mtimes plus the settings."""
    files = [p for p in (*subject.images.values(), subject.seg) if p is not None]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([CACHE_VERSION, min_voxels, float(spacing), stats])


def part_path(cache: Path, subject: Subject) -> Path:
    return cache / "parts" / subject.split / f"{subject.id}.npz"


def prepare_subject(subject: Subject, cache: Path, min_voxels: int, spacing: float) -> dict:
    """Write the subject's part file (unless an up-to-date one exists); returns its status for the report."""
    path, key = part_path(cache, subject), fingerprint(subject, min_voxels, spacing)
    if path.is_file():
        with np.load(path) as part:
            if str(part["fingerprint"]) == key and "blank" in part.files:
                return {"subject": subject.id, "nan": int(part["nan"]), "blank": [str(b) for b in part["blank"]]}
    try:
        volumes, labels, nonfinite, voxel_mm, blank = read_subject(subject)
    except SubjectError as err:
        return {"subject": subject.id, "reason": str(err)}
    # The resampling matmuls are tiny: a multi-threaded BLAS is many times slower on them on busy cores.
    with threadpool_limits(1, "blas"):
        images, seg, rows = zip(*(crop_axis(volumes, labels, axis, min_voxels, voxel_mm, spacing)
                                  for axis in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images=np.concatenate(images), seg=np.concatenate(seg), rows=np.concatenate(rows),
                 nan=nonfinite, blank=np.array(blank, dtype=str), fingerprint=key)
    os.replace(tmp, path)
    return {"subject": subject.id, "nan": nonfinite, "blank": blank}


def consolidate(cache: Path, split: str, subjects: list[Subject]) -> None:
    """Concatenate the split's part files into the memory-mappable arrays (skipped when already up to date)."""
    out = cache / split
    parts = [part_path(cache, s) for s in subjects]
    key = hashlib.sha1(json.dumps(
        [CACHE_VERSION, *([s.id, s.label, s.present, p.stat().st_mtime_ns] for s, p in zip(subjects, parts))]
    ).encode()).hexdigest()
    index_path = out / "index.json"
    if index_path.is_file() and json.loads(index_path.read_text())["key"] == key:
        return
    out.mkdir(parents=True, exist_ok=True)
    index_path.unlink(missing_ok=True)
    sizes = []
    for p in parts:
        with np.load(p) as part:
            sizes.append(len(part["rows"]))
    total = sum(sizes)
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.float16, (total, len(SEQUENCES), CROP, CROP))
    seg = np.lib.format.open_memmap(out / "seg.npy", "w+", np.uint8, (total, CROP, CROP))
    slices = np.zeros((total, 4), np.int32)
    start = 0
    for i, (p, n) in enumerate(zip(parts, sizes)):
        with np.load(p) as part:
            images[start:start + n], seg[start:start + n] = part["images"], part["seg"]
            slices[start:start + n, 0], slices[start:start + n, 1:] = i, part["rows"]
        start += n
    images.flush()
    seg.flush()
    del images, seg
    np.save(out / "slices.npy", slices)
    index = {"version": CACHE_VERSION, "key": key, "ids": [s.id for s in subjects],
             "labels": [s.label for s in subjects], "present": [list(s.present) for s in subjects]}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)


def build_report(kept: list[Subject], skipped: list[dict], nan: dict[str, int], blank: dict[str, list[str]],
                 spacing: float) -> dict:
    labels = np.array([s.label for s in kept], int)
    return {
        "spacing_mm": float(spacing),
        "subjects": len(kept),
        "labeled": int(np.sum(labels >= 0)),
        "per_class": class_counts(labels),
        "splits": {split: sum(s.split == split for s in kept) for split in sorted({s.split for s in kept})},
        "missing_sequences": {name: sum(s.images[name] is None for s in kept) for name in SEQUENCES},
        "skipped": skipped,
        "nan_voxels_zeroed": {k: v for k, v in nan.items() if v},
        "blank_sequences": {k: v for k, v in blank.items() if v},
        "notes": {s.id: list(s.notes) for s in kept if s.notes},
    }


def summary(report: dict, cache: Path) -> str:
    """One-screen text summary of a report."""
    lines = [
        f"cache {cache} ({CROP} px crops at {report['spacing_mm']:g} mm): {report['subjects']} subjects kept "
        f"{report['splits']}, {report['labeled']} labeled {report['per_class']}",
        f"missing sequences: {report['missing_sequences']}",
        f"non-finite voxels set to 0 in {len(report['nan_voxels_zeroed'])} subject(s)",
        f"blank sequences treated as missing in {len(report['blank_sequences'])} subject(s)"
        + "".join(f"; {k}: {','.join(v)}" for k, v in list(report["blank_sequences"].items())[:5]),
        f"skipped {len(report['skipped'])} subject(s)" + (":" if report["skipped"] else ""),
    ]
    lines += [f"  {s['subject']}: {s['reason']}" for s in report["skipped"][:15]]
    if len(report["skipped"]) > 15:
        lines.append(f"  ... {len(report['skipped']) - 15} more in {cache / 'report.json'}")
    return "\n".join(lines)


def prepare(root, layout: str, output, labels_csv=None, label_column=None, id_column=None,
            workers: int = 1, min_tumour_voxels: int = 1, spacing: float = DEFAULT_SPACING) -> dict:
    """Discover, read and cache a cohort; returns the report (also written to ``output/report.json``)."""
    if min_tumour_voxels < 1:
        raise ValueError(f"--min-tumour-voxels must be >= 1, got {min_tumour_voxels}")
    if not spacing > 0:
        raise ValueError(f"--spacing must be a positive number of mm, got {spacing}")
    cache = Path(output)
    subjects, skipped = discover(root, layout, labels_csv, label_column, id_column)
    work = partial(prepare_subject, cache=cache, min_voxels=min_tumour_voxels, spacing=spacing)
    progress = partial(tqdm, total=len(subjects), desc="prepare", unit="subject")
    if workers > 1:
        # spawn, not fork: the caller may have started JAX's threads (train.py prepares on first use)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(progress(pool.map(work, subjects)))
    else:
        results = [work(s) for s in progress(subjects)]
    kept = [without(s, r["blank"]) for s, r in zip(subjects, results) if "reason" not in r]
    skipped += [r for r in results if "reason" in r]
    if not kept:
        first = f"; first: {skipped[0]['subject']}: {skipped[0]['reason']}" if skipped else ""
        raise ValueError(f"no usable {layout} subject under {root} ({len(skipped)} skipped{first}); "
                         f"check --root and --layout (layouts: {', '.join(LAYOUTS)})")
    for split in sorted({s.split for s in kept}):
        consolidate(cache, split, [s for s in kept if s.split == split])
    good = [r for r in results if "reason" not in r]
    report = build_report(kept, skipped, {r["subject"]: r["nan"] for r in good},
                          {r["subject"]: r["blank"] for r in good}, spacing)
    (cache / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    """The command line; errors end in one line and exit status 2 (``cli_errors``)."""
    run_cli(_main, argv, prog="python -m mmdino_jax.data.prepare")


def _main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="cohort root folder")
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--output", required=True, help="cache folder to write")
    parser.add_argument("--labels", help="labels CSV (mmdino default: ROOT/phenoData.csv)")
    parser.add_argument("--label-column", help="label column, values 0..2 (mmdino default: WHO2021_Int)")
    parser.add_argument("--id-column", help="subject id column (mmdino default: Patient; else the first column)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-tumour-voxels", type=int, default=1,
                        help="keep slices with at least this many tumour voxels (the largest is always kept)")
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING,
                        help=f"in-plane pixel size of the crops in mm (default {DEFAULT_SPACING:g}, the paper's SRI "
                             f"space): a {CROP} px crop spans {CROP} x spacing mm for any scan")
    args = parser.parse_args(argv)
    report = prepare(args.root, args.layout, args.output, args.labels, args.label_column, args.id_column,
                     args.workers, args.min_tumour_voxels, args.spacing)
    print(summary(report, Path(args.output)))


if __name__ == "__main__":
    main()

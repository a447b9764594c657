"""Synthetic glioma cohort on a real brain (MNI ICBM152 2009a from nilearn), in the MM-DINOv2 BIDS layout.

Anatomy: nilearn's packaged T1 template with its GM and WM probability maps; CSF is the dark T1 inside a
dilated GM+WM mask. Every subject gets a small smooth random deformation, a tumour whose evidence needs
more than one sequence, and T1, T1c, T2 and FLAIR from spin-echo / inversion-recovery signal equations,
followed by a bias field, through-plane blur (external site), Rician noise and per-scan intensity scaling.

Classes (WHO2021_Int): 0 astrocytoma, 1 glioblastoma, 2 oligodendroglioma.
- glioblastoma: ring enhancement (T1c vs T1) around a necrotic core, extensive oedema (10 % non-enhancing).
- astrocytoma: homogeneous non-enhancing, sharp margin, T2-FLAIR mismatch in half of them
  (core bright on T2, dark on FLAIR, FLAIR-bright rim).
- oligodendroglioma: cortical, mostly frontal, ill-defined and heterogeneous, calcified foci dark on
  T2/FLAIR, faint patchy enhancement in half, never a necrotic ring.
All classes share the lesion-size distribution, get normal dural/choroid-plexus enhancement on T1c, and
non-enhancing tumours sometimes carry T1-bright (haemorrhagic) foci.

Segmentation labels (BraTS 2021 convention): 0 background, 1 necrotic / non-enhancing tumour core
(necrosis, solid tumour, mismatch core, calcification, haemorrhage, microcysts), 2 peritumoural oedema,
4 enhancing tumour (ring and faint patchy enhancement). Normal enhancement is not labelled.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

from mmdino_jax.cli_errors import run_cli
from mmdino_jax.constants import CLASS_NAMES, SEQUENCES, UNLABELED
from mmdino_jax.data.mri_signal import NORMAL_TISSUES, PROTOCOLS, TISSUES, Protocol, Tissue, tissue_signals

SPLITS = ("train", "val", "test")
SITES = ("internal", "external")
SITE_TAGS = {"internal": "int", "external": "ext"}
DEFAULT_CLASS_PROBS = (0.35, 0.40, 0.25)
DEFORM_MM = 2.0  # std of the smooth displacement field
SCALE_SD = 0.03  # std of the per-axis brain size factor (clipped at 2 std)
WARP_MARGIN_MM = 3 * DEFORM_MM + 2 * SCALE_SD * 100.0  # farthest a voxel moves (brain half-extent < 100 mm)
LESION_RADIUS_MM = (15.0, 30.0)  # radius of the FLAIR-abnormal region, same for every class
SEG_LABELS = {"oedema": 2, "enhancing": 4, "faint_enhancement": 4}  # every other lesion tissue: 1
ASTRO, GBM, OLIGO = 0, 1, 2


@dataclass(frozen=True)
class Atlas:
    """Tissue maps on the working grid, cropped to the brain (``crop`` places them in the full grid)."""

    affine: np.ndarray  # full-grid voxel-to-MNI affine
    shape: tuple[int, int, int]  # full grid
    crop: tuple[slice, slice, slice]
    voxel_mm: float
    maps: np.ndarray  # (3, *crop shape) float32 fractions of GM, WM, CSF
    support: np.ndarray  # voxels with (or next to) some tissue
    deep: np.ndarray  # more than 15 mm inside the brain (CSF there: ventricles, falx)
    centres: dict  # (region, frontal) -> (n, 3) int voxel indices of candidate lesion centres


def _csf_fraction(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """CSF = dark T1 voxels inside the GM+WM mask dilated by 2 mm, minus the GM and WM there."""
    inside = ndi.binary_dilation(gm + wm > 0.2, iterations=2)
    dark = np.clip((0.55 - t1) / 0.15, 0.0, 1.0)
    return (np.clip(1.0 - gm - wm, 0.0, 1.0) * dark * inside).astype(np.float32)


def _resample(data: np.ndarray, affine: np.ndarray, resolution: float):
    """Resample 1 mm template data to an isotropic grid with the same origin; returns (array, affine)."""
    from nilearn import image

    if resolution == 1.0:
        return data, affine
    target = affine.copy()
    target[:3, :3] = np.diag([resolution] * 3)
    shape = tuple(math.ceil(s / resolution) for s in data.shape)
    img = image.resample_img(nib.Nifti1Image(data, affine), target_affine=target, target_shape=shape,
                             interpolation="linear", force_resample=True, copy_header=True)
    return np.clip(img.get_fdata(dtype=np.float32), 0.0, 1.0), target


def _lesion_centres(gm, wm, depth_mm, y_mm, z_mm) -> dict:
    """Supratentorial candidate lesion centres: deep white matter and the cortical-subcortical band,
    keyed by (region, frontal)."""
    cerebrum = (z_mm > -15.0)[None, None, :]
    frontal = (y_mm > 5.0)[None, :, None]
    regions = {"deep": (wm > 0.7) & (depth_mm > 25.0),
               "cortical": (gm > 0.2) & (wm > 0.2) & (depth_mm > 12.0) & (depth_mm < 25.0)}
    return {(name, f): np.argwhere(region & cerebrum & (frontal == f)) for name, region in regions.items()
            for f in (True, False)}


@functools.lru_cache(maxsize=4)
def load_atlas(resolution: float = 2.0) -> Atlas:
    """Tissue maps of nilearn's MNI152 2009a template on a ``resolution`` mm grid (cached per process)."""
    from nilearn import datasets

    imgs = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1)]
    t1, gm, wm = (np.asarray(img.get_fdata(), dtype=np.float32) for img in imgs)
    csf = _csf_fraction(t1, gm, wm)
    affine = imgs[0].affine
    (gm, affine_r), (wm, _), (csf, _) = (_resample(m, affine, resolution) for m in (gm, wm, csf))
    shape = gm.shape
    brain = gm + wm + csf > 0.5
    margin = int(math.ceil(WARP_MARGIN_MM / resolution)) + 1
    lo = np.maximum(np.argwhere(brain).min(0) - margin, 0)
    hi = np.minimum(np.argwhere(brain).max(0) + margin + 1, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    gm, wm, csf, brain = gm[crop], wm[crop], csf[crop], brain[crop]
    depth_mm = ndi.distance_transform_edt(brain, sampling=resolution).astype(np.float32)
    y_mm, z_mm = (affine_r[a, a] * np.arange(shape[a])[crop[a]] + affine_r[a, 3] for a in (1, 2))
    support = ndi.binary_dilation(gm + wm + csf > 0.01, ndi.generate_binary_structure(3, 3))
    return Atlas(affine=affine_r, shape=shape, crop=crop, voxel_mm=float(resolution),
                 maps=np.stack([gm, wm, csf]), support=support, deep=depth_mm > 15.0,
                 centres=_lesion_centres(gm, wm, depth_mm, y_mm, z_mm))


def smooth_field(rng: np.random.Generator, shape, n_freq: int = 4) -> np.ndarray:
    """Zero-mean, unit-std random field from the lowest ``n_freq`` cosine frequencies per axis."""
    freqs = [np.arange(min(n_freq, s)) for s in shape]
    bases = [np.cos(np.pi * f[:, None] * (np.arange(s) + 0.5)[None] / s).astype(np.float32)
             for f, s in zip(freqs, shape)]
    grid = np.meshgrid(*freqs, indexing="ij")
    coef = rng.standard_normal(grid[0].shape) / (1.0 + np.sqrt(sum(g**2 for g in grid)))
    coef.flat[0] = 0.0
    # The DCT-II basis is orthogonal on this grid and non-constant cosines have mean square 1/2.
    variance = float((coef**2 * 0.5 ** sum(g > 0 for g in grid)).sum())
    field = np.einsum("ijk,ix,jy,kz->xyz", coef.astype(np.float32), *bases, optimize=True)
    return field / np.float32(max(variance, 1e-12) ** 0.5)


def _deformed_maps(atlas: Atlas, rng: np.random.Generator) -> np.ndarray:
    """Atlas maps warped by a random per-axis scaling plus a smooth displacement field."""
    shape = atlas.maps.shape[1:]
    scale = np.exp(np.clip(rng.normal(0.0, SCALE_SD, 3), -2 * SCALE_SD, 2 * SCALE_SD))
    coords = np.indices(shape, dtype=np.float32)
    for axis, (size, factor) in enumerate(zip(shape, scale)):
        centre = (size - 1) / 2
        disp = smooth_field(rng, shape, 3) * (DEFORM_MM / atlas.voxel_mm)
        coords[axis] = centre + (coords[axis] - centre) / np.float32(factor) + disp
    nearest = tuple(np.clip(np.rint(c).astype(np.intp), 0, s - 1) for c, s in zip(coords, shape))
    inside = atlas.support[nearest]  # interpolate only where the source has tissue
    points = coords[:, inside]
    maps = np.zeros(atlas.maps.shape, dtype=np.float32)
    for warped, source in zip(maps, atlas.maps):
        warped[inside] = ndi.map_coordinates(source, points, order=1, mode="constant")
    return maps


def _normal_enhancement(rng, csf: np.ndarray, brain: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """Patchy enhancing fraction of the dura (brain surface, falx) and the choroid plexus (deep CSF)."""
    host = 0.6 * (brain & ~ndi.binary_erosion(brain)) + 0.4 * ((csf > 0.6) & deep)
    return (host * np.clip(0.6 + smooth_field(rng, brain.shape, 8), 0.0, 1.0)).astype(np.float32)


def _inside(rho: np.ndarray, threshold: float, width: float) -> np.ndarray:
    """Soft membership rho < threshold with a logistic edge of ``width``."""
    return 1.0 / (1.0 + np.exp(np.clip((rho - threshold) / width, -30, 30)))


def _blobs(rng, offsets_mm: np.ndarray, region: np.ndarray, count: int, radius_mm: float, width: float):
    """Soft union of ``count`` spheres centred on random voxels of ``region`` (empty region: zeros)."""
    out = np.zeros(region.shape, dtype=np.float32)
    candidates = np.argwhere(region)
    if len(candidates) == 0:
        return out
    for idx in candidates[rng.integers(len(candidates), size=count)]:
        dist = np.linalg.norm(offsets_mm - offsets_mm[(slice(None), *idx)][:, None, None, None], axis=0)
        out = np.maximum(out, _inside(dist, radius_mm, width))
    return out


@dataclass
class _Lesion:
    """Geometry shared by the class rules: normalised radius field of a lesion in its box."""

    rho: np.ndarray  # 1 at the border of the FLAIR-abnormal region
    brain: np.ndarray  # brain mask in the box
    offsets_mm: np.ndarray  # (3, *box) position relative to the centre
    radius_mm: float
    voxel_mm: float

    def inside(self, threshold: float, sharpness: float = 1.0) -> np.ndarray:
        """Soft region rho < threshold, its edge about ``sharpness`` voxels wide."""
        return _inside(self.rho, threshold, 0.5 * sharpness * self.voxel_mm / self.radius_mm)


def _t1_bright_foci(rng, lesion: _Lesion, solid: np.ndarray, p: float) -> np.ndarray:
    """Haemorrhagic T1-bright foci inside non-enhancing tumour, with probability ``p``."""
    count = int(rng.integers(1, 4)) if rng.random() < p else 0
    return _blobs(rng, lesion.offsets_mm, (solid > 0.6) & lesion.brain, count, 3.0, 0.5 * lesion.voxel_mm) * solid


def _glioblastoma(rng, lesion: _Lesion) -> tuple[dict, dict]:
    """Ring enhancement around necrosis with wide oedema; 10 % are non-enhancing."""
    tumour_r = rng.uniform(0.5, 0.7)
    rim = min(rng.uniform(3.0, 8.0) / lesion.radius_mm, 0.7 * tumour_r)
    solid = lesion.inside(tumour_r, 0.8)
    core = lesion.inside(tumour_r - rim, 0.8)
    enhancing = rng.random() >= 0.1
    patch = np.clip(0.9 + 0.3 * smooth_field(rng, lesion.rho.shape, 5), 0.0, 1.0)
    tissues = {"oedema": lesion.inside(1.0, 1.5) - solid}
    if enhancing:
        tissues |= {"necrosis": core, "enhancing": (solid - core) * patch, "tumour": (solid - core) * (1 - patch)}
    else:
        bright = _t1_bright_foci(rng, lesion, solid, 0.3)
        tissues |= {"tumour": solid - bright, "haemorrhage": bright}
    t1_bright = not enhancing and bool(tissues["haemorrhage"].max() > 0.5)
    return tissues, {"enhancing": enhancing, "ring": enhancing, "t1_bright": t1_bright}


def _astrocytoma(rng, lesion: _Lesion) -> tuple[dict, dict]:
    """Homogeneous non-enhancing tumour with a sharp margin; T2-FLAIR mismatch in half of them."""
    tumour_r = rng.uniform(0.8, 0.95)
    solid = lesion.inside(tumour_r, 0.5)
    mismatch = rng.random() < 0.5
    core = lesion.inside(tumour_r - rng.uniform(3.0, 6.0) / lesion.radius_mm, 0.5) if mismatch else np.zeros_like(solid)
    bright = _t1_bright_foci(rng, lesion, solid - core, 0.3)
    tissues = {"oedema": lesion.inside(1.0, 1.0) - solid, "mismatch_core": core,
               "tumour": solid - core - bright, "haemorrhage": bright}
    return tissues, {"enhancing": False, "mismatch": mismatch, "t1_bright": bool(bright.max() > 0.5)}


def _oligodendroglioma(rng, lesion: _Lesion) -> tuple[dict, dict]:
    """Ill-defined heterogeneous tumour with calcified foci, faint patchy enhancement in half, no ring."""
    solid = lesion.inside(rng.uniform(0.8, 0.95), 2.0)
    cysts = solid * np.clip(smooth_field(rng, lesion.rho.shape, 7) - 0.3, 0.0, 0.6)
    calcified = rng.random() < 0.7
    calc = _blobs(rng, lesion.offsets_mm, (solid > 0.6) & lesion.brain, int(rng.integers(2, 7)) if calcified else 0,
                  rng.uniform(2.0, 3.5), 0.3 * lesion.voxel_mm) * solid
    rest = np.clip(solid - cysts - calc, 0.0, None)
    patchy = rng.random() < 0.5
    faint = rest * np.clip(smooth_field(rng, lesion.rho.shape, 6) - 0.5, 0.0, 0.8) if patchy else np.zeros_like(rest)
    bright = _t1_bright_foci(rng, lesion, rest - faint, 0.15)
    tissues = {"oedema": lesion.inside(1.0, 2.0) - solid, "microcyst": cysts, "calcification": calc,
               "faint_enhancement": faint, "haemorrhage": bright, "tumour": rest - faint - bright}
    return tissues, {"enhancing": patchy, "calcified": calcified, "t1_bright": bool(bright.max() > 0.5)}


CLASS_RULES = {ASTRO: _astrocytoma, GBM: _glioblastoma, OLIGO: _oligodendroglioma}
# (region, probability of a frontal centre) per class; oligodendrogliomas are cortical and mostly frontal.
PLACEMENT = {ASTRO: ("deep", 0.5), GBM: ("deep", 0.3), OLIGO: ("cortical", 0.6)}


def _place_lesion(rng, atlas: Atlas, diagnosis: int, brain: np.ndarray):
    """Random centre, radius and box of a lesion; returns (box slices, _Lesion, findings)."""
    region, p_frontal = PLACEMENT[diagnosis]
    frontal = bool(rng.random() < p_frontal)
    candidates = atlas.centres[(region, frontal)]
    centre = candidates[rng.integers(len(candidates))]
    radius = rng.uniform(*LESION_RADIUS_MM)
    half = int(math.ceil(2.0 * radius / atlas.voxel_mm))
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, atlas.maps.shape[1:])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    offsets = (np.indices(hi - lo, dtype=np.float32) + (lo - centre)[:, None, None, None]) * atlas.voxel_mm
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0].astype(np.float32)
    axes = (radius * np.exp(np.clip(rng.normal(0.0, 0.15, 3), -0.25, 0.25))).astype(np.float32)
    local = np.einsum("ij,i...->j...", rotation, offsets) / axes[:, None, None, None]
    irregular = 0.15 if diagnosis == ASTRO else 0.22
    rho = np.linalg.norm(local, axis=0) * np.exp(irregular * np.clip(smooth_field(rng, hi - lo, 5), -1.5, 1.5))
    findings = {"region": region, "frontal": frontal, "radius_mm": round(float(radius), 1)}
    return box, _Lesion(rho, brain[box], offsets, float(radius), atlas.voxel_mm), findings


def _jittered_tissues(rng) -> dict[str, Tissue]:
    """Per-subject biological variability of relaxation times and contrast uptake."""
    out = {}
    for name, t in TISSUES.items():
        sd = 0.03 if name in NORMAL_TISSUES else 0.08
        t1, t2 = t.t1 * math.exp(rng.normal(0, sd)), t.t2 * math.exp(rng.normal(0, sd))
        out[name] = Tissue(t1, t2, t.pd, t.gd * math.exp(rng.normal(0, 0.15)))
    return out


def _seg_labels(tissues: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
    """BraTS labels from lesion tissue fractions: the dominant group where the lesion fills half a voxel."""
    groups = np.zeros((3,) + brain.shape, dtype=np.float32)
    order = {1: 0, 2: 1, 4: 2}
    for name, frac in tissues.items():
        groups[order[SEG_LABELS.get(name, 1)]] += frac
    labels = np.array([1, 2, 4], dtype=np.uint8)[groups.argmax(0)]
    return np.where((groups.sum(0) >= 0.5) & brain, labels, 0).astype(np.uint8)


def _acquire(rng, signal: np.ndarray, brain: np.ndarray, wm_signal: float, protocol: Protocol,
             voxel_mm: float) -> np.ndarray:
    """Bias field, Rician noise, thick-slice profile (noise included), skull stripping, scaling to int16."""
    values = signal[brain] * np.exp(protocol.bias * smooth_field(rng, signal.shape, 3)[brain])
    noise = rng.standard_normal((2, values.size), dtype=np.float32) * np.float32(protocol.noise * wm_signal)
    values = np.hypot(values + noise[0], noise[1])
    if protocol.slice_mm > 0:
        volume = np.zeros(signal.shape, dtype=np.float32)
        volume[brain] = values
        values = ndi.gaussian_filter1d(volume, protocol.slice_mm / 2.355 / voxel_mm, axis=2)[brain]
    scale = rng.uniform(*protocol.wm_level) / wm_signal
    out = np.zeros(signal.shape, dtype=np.int16)
    out[brain] = np.clip(np.rint(values * scale), 0, np.iinfo(np.int16).max)
    return out


def _fit_lesion(tissues: dict[str, np.ndarray], normal: np.ndarray) -> dict[str, np.ndarray]:
    """Lesion fractions limited to the brain tissue of each voxel (oedema to parenchyma), summing to <= 1."""
    total = normal.sum(0)
    tissues = {name: np.clip(f, 0.0, 1.0) for name, f in tissues.items()}
    tissues["oedema"] = tissues["oedema"] * normal[:2].sum(0) / np.maximum(total, 1e-6)
    scale = np.minimum(total, 1.0) / np.maximum(sum(tissues.values()), 1.0)
    return {name: f * scale for name, f in tissues.items()}


def synthesize_subject(rng: np.random.Generator, diagnosis: int, site: str = "internal",
                       atlas: Atlas | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """One subject on the atlas' full grid: ({sequence: int16 image}, uint8 seg, findings)."""
    atlas = load_atlas() if atlas is None else atlas
    protocol = PROTOCOLS[site]
    signals = {name: tissue_signals(t, protocol) for name, t in _jittered_tissues(rng).items()}
    maps = _deformed_maps(atlas, rng)
    total = maps.sum(0)
    brain = total >= 0.5
    enhancement = _normal_enhancement(rng, maps[2], brain, atlas.deep)
    maps = np.concatenate([maps * (1.0 - enhancement), (enhancement * total)[None]])
    box, lesion, findings = _place_lesion(rng, atlas, diagnosis, brain)
    lesion_tissues, class_findings = CLASS_RULES[diagnosis](rng, lesion)
    lesion_tissues = _fit_lesion(lesion_tissues, maps[(slice(None), *box)])
    filled = sum(lesion_tissues.values())
    seg = np.zeros(atlas.shape, dtype=np.uint8)
    seg[atlas.crop][box] = _seg_labels(lesion_tissues, brain[box])
    images = {}
    for seq in SEQUENCES:
        signal = np.tensordot(np.array([signals[n][seq] for n in NORMAL_TISSUES], np.float32), maps, axes=1)
        signal[box] = signal[box] * (1.0 - filled) + sum(f * signals[n][seq] for n, f in lesion_tissues.items())
        images[seq] = np.zeros(atlas.shape, dtype=np.int16)
        images[seq][atlas.crop] = _acquire(rng, signal, brain, signals["wm"][seq], protocol, atlas.voxel_mm)
    return images, seg, findings | class_findings


def _subject_id(site: str, split: str, index: int) -> str:
    return f"phantom-{SITE_TAGS[site]}-{split}-{index + 1:04d}"


def _stratified(probs, n: int) -> np.ndarray:
    """Class of each of ``n`` subjects in sorted order, counts by largest remainder."""
    raw = np.asarray(probs, dtype=float) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return np.repeat(np.arange(len(raw)), counts)


def _plan(subjects, seed, split, labeled_fraction, missing_rate, site, class_probs) -> list[dict]:
    """Per-subject task descriptions; everything random here comes from the cohort seed only."""
    cohort_rng = np.random.default_rng([seed, SITES.index(site), SPLITS.index(split), 0])
    diagnoses = cohort_rng.permutation(_stratified(class_probs, subjects))
    labeled = np.zeros(subjects, dtype=bool)
    labeled[cohort_rng.permutation(subjects)[: round(labeled_fraction * subjects)]] = True
    return [{"id": _subject_id(site, split, i), "index": i, "seed": seed, "split": split, "site": site,
             "diagnosis": int(diagnoses[i]), "labeled": bool(labeled[i]), "missing_rate": missing_rate}
            for i in range(subjects)]


def _present_sequences(rng, missing_rate: float) -> list[str]:
    """Each sequence dropped with probability ``missing_rate``; at least one is kept."""
    keep = rng.random(len(SEQUENCES)) >= missing_rate
    if not keep.any():
        keep[rng.integers(len(SEQUENCES))] = True
    return [s for s, k in zip(SEQUENCES, keep) if k]


def _write_subject(atlas: Atlas, task: dict, output: Path) -> dict:
    """Synthesise and write one subject; returns its row."""
    entropy = [task["seed"], SITES.index(task["site"]), SPLITS.index(task["split"]), 1, task["index"]]
    image_rng, missing_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(2))
    images, seg, findings = synthesize_subject(image_rng, task["diagnosis"], task["site"], atlas)
    present = _present_sequences(missing_rng, task["missing_rate"])
    folder = output / task["split"] / task["id"] / "preop"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{task['id']}_ses-preop_space-sri_"
    for seq in SEQUENCES:
        path = folder / f"{stem}{seq}.nii.gz"
        if seq in present:
            nib.save(nib.Nifti1Image(images[seq], atlas.affine), path)
        else:
            path.unlink(missing_ok=True)
    nib.save(nib.Nifti1Image(seg, atlas.affine), folder / f"{stem}seg.nii.gz")
    return {"Patient": task["id"], "WHO2021_Int": task["diagnosis"] if task["labeled"] else UNLABELED,
            "split": task["split"], "site": task["site"], "diagnosis": task["diagnosis"],
            "sequences": present, "findings": findings}


_WORKER_ATLAS: Atlas | None = None


def _init_worker(atlas: Atlas) -> None:
    global _WORKER_ATLAS
    _WORKER_ATLAS = atlas


def _work(args: tuple[dict, Path]) -> dict:
    return _write_subject(_WORKER_ATLAS, *args)


def _merge_phenotypes(path: Path, rows: list[dict]) -> None:
    """Write phenoData.csv, replacing rows of the same Patient and keeping every other row."""
    table = {}
    if path.exists():
        with open(path, newline="") as f:
            table = {r["Patient"]: r["WHO2021_Int"] for r in csv.DictReader(f)}
    for row in rows:
        table[row["Patient"]] = "" if row["WHO2021_Int"] == UNLABELED else str(row["WHO2021_Int"])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Patient", "WHO2021_Int"])
        writer.writerows(sorted(table.items()))


def _check_args(subjects, seed, split, labeled_fraction, missing_rate, site, resolution, workers, class_probs):
    """Raise ValueError with a one-line message for any invalid argument."""
    checks = [
        (isinstance(subjects, (int, np.integer)) and subjects >= 1,
         f"subjects must be an integer >= 1, got {subjects!r}"),
        (isinstance(seed, (int, np.integer)) and seed >= 0, f"seed must be a non-negative integer, got {seed!r}"),
        (split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {split!r}"),
        (0.0 <= labeled_fraction <= 1.0, f"labeled fraction must be in [0, 1], got {labeled_fraction}"),
        (0.0 <= missing_rate < 1.0, f"missing rate must be in [0, 1), got {missing_rate}"),
        (site in SITES, f"site must be one of {', '.join(SITES)}, got {site!r}"),
        (0.5 <= resolution <= 6.0, f"resolution must be in [0.5, 6] mm, got {resolution}"),
        (workers is None or workers >= 1, f"workers must be >= 1, got {workers}"),
        (len(class_probs) == len(CLASS_NAMES) and min(class_probs) >= 0 and abs(sum(class_probs) - 1) < 1e-6,
         f"class probabilities must be {len(CLASS_NAMES)} non-negative numbers summing to 1, got {class_probs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def generate_cohort(output, subjects: int, seed: int, split: str = "train", labeled_fraction: float = 1.0,
                    missing_rate: float = 0.0, site: str = "internal", resolution: float = 2.0,
                    workers: int | None = None, class_probs=DEFAULT_CLASS_PROBS) -> list[dict]:
    """Write ``subjects`` phantoms of one split into ``output`` and merge their rows into phenoData.csv.

    Deterministic for (seed, site, split, subject index) whatever ``workers`` is. Returns one dict per
    subject: Patient, WHO2021_Int (-1 = unlabeled; empty in the CSV), split, site, diagnosis (true class),
    sequences (those written) and findings (lesion ground truth).
    """
    _check_args(subjects, seed, split, labeled_fraction, missing_rate, site, resolution, workers, class_probs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tasks = _plan(int(subjects), int(seed), split, labeled_fraction, missing_rate, site, class_probs)
    atlas = load_atlas(float(resolution))
    workers = min(workers or len(os.sched_getaffinity(0)), len(tasks))
    progress = functools.partial(tqdm, total=len(tasks), desc=f"phantom {site} {split}", unit="subject")
    if workers == 1:
        rows = [_write_subject(atlas, t, output) for t in progress(tasks)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(atlas,)) as pool:
            rows = list(progress(pool.imap(_work, [(t, output) for t in tasks])))
    _merge_phenotypes(output / "phenoData.csv", rows)
    return rows


def _class_probs(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="cohort root directory")
    parser.add_argument("--subjects", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--labeled-fraction", default=1.0, type=float)
    parser.add_argument("--missing-rate", default=0.0, type=float)
    parser.add_argument("--site", default="internal", choices=SITES)
    parser.add_argument("--resolution", default=2.0, type=float, help="isotropic voxel size in mm")
    parser.add_argument("--workers", default=None, type=int, help="processes (default: all cores)")
    parser.add_argument("--class-probs", default=DEFAULT_CLASS_PROBS, type=_class_probs,
                        help="astrocytoma,glioblastoma,oligodendroglioma frequencies")
    args = parser.parse_args(argv)
    try:
        rows = generate_cohort(args.output, args.subjects, args.seed, args.split, args.labeled_fraction,
                               args.missing_rate, args.site, args.resolution, args.workers, args.class_probs)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {len(rows)} subjects to {args.output / args.split}")


if __name__ == "__main__":
    run_cli(main, prog="python -m mmdino_jax.data.phantom")

"""The prepared cache a run reads: prepared once from `data.root`, or from a generated synthetic cohort."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmdino_jax.data import phantom
from mmdino_jax.data.prepare import prepare

# (split, site, labeled fraction) of the synthetic cohort: train and val from the internal site,
# test from the site-shifted external one (MM-DINOv2 tests on an external cohort, TCGA).
PHANTOM_SPLITS = (("train", "internal", None), ("val", "internal", 1.0), ("test", "external", 1.0))


def generate_phantom_cohort(root: Path, phantom_cfg, seed: int) -> Path:
    """Write the synthetic cohort once; `root/cohort.json` records what was written."""
    done = root / "cohort.json"
    if done.is_file():
        return root
    counts = {}
    for k, (split, site, labeled) in enumerate(PHANTOM_SPLITS):
        n = phantom_cfg[f"{split}_subjects"]
        phantom.generate_cohort(
            root, n, seed + k, split=split, site=site,
            labeled_fraction=phantom_cfg.labeled_fraction if labeled is None else labeled,
            missing_rate=phantom_cfg.missing_rate, resolution=phantom_cfg.resolution)
        counts[split] = n
    done.write_text(json.dumps({"subjects": counts, "seed": seed, **phantom_cfg.to_dict()}, indent=2))
    return root


def cache_spacing(cache: Path) -> float | None:
    """The crop spacing (mm) a prepared cache was made with; None when it has no report yet."""
    report = cache / "report.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text()).get("spacing_mm")


def ensure_cache(data_cfg, workdir: str, seed: int) -> Path:
    """Path of the prepared cache, preparing it (and the synthetic cohort) on first use, and again (reusing
    nothing that depends on it) when it was prepared at another `data.spacing`."""
    cache = Path(data_cfg.cache or Path(workdir) / "cache")
    if cache_spacing(cache) == data_cfg.spacing:
        return cache
    if data_cfg.root:
        root, layout = Path(data_cfg.root).expanduser(), data_cfg.layout
    else:
        root, layout = generate_phantom_cohort(Path(workdir) / "cohort", data_cfg.phantom, seed), "mmdino"
    prepare(root, layout, cache, labels_csv=data_cfg.labels_csv or None,
            label_column=data_cfg.label_column or None,
            workers=max(data_cfg.workers, len(os.sched_getaffinity(0))),  # one process per usable core
            min_tumour_voxels=1, spacing=data_cfg.spacing)
    return cache

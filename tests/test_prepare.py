"""prepare.py: cached crops and counts, bad inputs reported while good subjects survive, resume, CLI."""

import json

import numpy as np
import pytest
from test_cohort import phantom, write_nifti, write_subject

from mmdino_jax.constants import SEQUENCES
from mmdino_jax.data.pipeline import CachedSplit
from mmdino_jax.data.prepare import CROP, crop_axis, main, prepare, seg_labels


def cached(cache, split="train"):
    index = json.loads((cache / split / "index.json").read_text())
    arrays = {name: np.load(cache / split / f"{name}.npy") for name in ("images", "seg", "slices")}
    return index, arrays


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Good subjects (one missing t1, one with NaN voxels) plus one subject per kind of bad input."""
    root = tmp_path_factory.mktemp("cohort")
    good = {n: write_subject(root, "mmdino", n) for n in (1, 2, 3)}
    write_subject(root, "mmdino", 4, missing=("t1",))
    _, nan_paths, nan_images, _ = write_subject(root, "mmdino", 5)
    nan_images[2, :3, :2, :1] = np.nan
    nan_images[2, 0, 0, 5] = np.inf
    write_nifti(nan_paths["t2"], nan_images[2])
    _, paths, _, _ = write_subject(root, "mmdino", 6)  # truncated gzip
    paths["t1c"].write_bytes(paths["t1c"].read_bytes()[:200])
    _, paths, _, _ = write_subject(root, "mmdino", 7)  # shape mismatch
    write_nifti(paths["flair"], np.zeros((20, 24, 15), np.float32))
    _, paths, _, _ = write_subject(root, "mmdino", 8)  # affine mismatch
    write_nifti(paths["t2"], phantom(8)[0][2], affine=np.diag([2.0, 1, 1, 1]))
    _, paths, _, _ = write_subject(root, "mmdino", 9)  # empty segmentation
    write_nifti(paths["seg"], np.zeros((20, 24, 16), np.uint8))
    write_subject(root, "mmdino", 10, seg=False)  # missing segmentation
    write_subject(root, "mmdino", 11, missing=SEQUENCES)  # no images at all
    write_subject(root, "mmdino", 12)  # label outside 0..2
    (root / "phenoData.csv").write_text("Patient,WHO2021_Int\nsub001,0\nsub002,1\nsub003,1\nsub004,\n"
                                        "sub012,5\nsub099,2\n")
    cache = tmp_path_factory.mktemp("cache")
    report = prepare(root, "mmdino", cache, workers=1)
    return root, cache, report, good


def test_report_lists_every_bad_input_and_keeps_good_subjects(cohort):
    _, cache, report, _ = cohort
    assert report == json.loads((cache / "report.json").read_text())
    reasons = {s["subject"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {f"sub{n:03d}" for n in (6, 7, 8, 9, 10, 11, 12, 99)}
    assert "cannot read sub-sub006_ses-preop_space-sri_t1c.nii.gz" in reasons["sub006"]
    assert "flair shape (20, 24, 15) differs" in reasons["sub007"]
    assert "t2 affine differs" in reasons["sub008"]
    assert "no tumour voxel" in reasons["sub009"]
    assert "no segmentation" in reasons["sub010"]
    assert "no image found" in reasons["sub011"]
    assert "0..2" in reasons["sub012"]
    assert "no subject folder" in reasons["sub099"]
    assert report["subjects"] == 5 and report["labeled"] == 3
    assert report["per_class"] == {"astrocytoma": 1, "glioblastoma": 2, "oligodendroglioma": 0}
    assert report["missing_sequences"] == {"t1": 1, "t1c": 0, "t2": 0, "flair": 0}
    assert report["nan_voxels_zeroed"] == {"sub005": 7}


def test_cache_holds_every_tumour_slice_with_voxel_counts(cohort):
    _, cache, _, good = cohort
    index, arrays = cached(cache)
    assert index["ids"] == [f"sub{n:03d}" for n in range(1, 6)]
    assert index["labels"] == [0, 1, 1, -1, -1]
    assert index["present"][3] == [False, True, True, True]
    images, seg, slices = arrays["images"], arrays["seg"], arrays["slices"]
    assert images.dtype == np.float16 and images.shape[1:] == (4, CROP, CROP) and seg.dtype == np.uint8
    assert 0 <= images.min() and images.max() <= 1
    for subject, (_, _, _, labels) in enumerate(good.values()):
        rows = slices[slices[:, 0] == subject]
        for axis in range(3):
            counts = np.moveaxis(labels > 0, axis, 0).sum(axis=(1, 2))  # voxel counts, not label sums
            on_axis = rows[rows[:, 1] == axis]
            np.testing.assert_array_equal(on_axis[:, 2], np.flatnonzero(counts))
            np.testing.assert_array_equal(on_axis[:, 3], counts[counts > 0])
        # volumes smaller than 96 are kept whole (zero-padded), so each crop holds the whole slice's tumour
        np.testing.assert_array_equal((seg[slices[:, 0] == subject] > 0).sum(axis=(1, 2)), rows[:, 3])
    assert set(np.unique(seg)) == {0, 2, 4}  # the label values, not only the tumour mask
    assert not images[slices[:, 0] == 3][:, 0].any()  # sub004 has no t1


def test_crop_is_centred_on_the_slice_tumour_and_scaled():
    rng = np.random.default_rng(0)
    volumes = rng.uniform(0, 1000, (4, 150, 130, 3)).astype(np.float32)
    mask = np.zeros((150, 130, 3), bool)
    mask[60:70, 120:126, 1] = True  # centre (64.5, 122.5): the window shifts back from the right edge
    images, seg, rows = crop_axis(volumes, mask, axis=2, min_voxels=1)
    np.testing.assert_array_equal(rows, [[2, 1, 60]])
    np.testing.assert_array_equal(seg[0], mask[16:112, 34:130, 1])  # round(64.5) = 64 -> start 16
    region = volumes[:, 16:112, 34:130, 1]
    low, high = np.percentile(region, [1, 99], axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(images[0], np.clip((region - low) / (high - low), 0, 1), atol=1e-3)


def test_rerun_reuses_parts_and_redoes_changed_subjects(cohort):
    root, cache, report, _ = cohort
    parts = {p.name: p.stat().st_mtime_ns for p in (cache / "parts" / "train").glob("*.npz")}
    before = cached(cache)
    write_subject(root, "mmdino", 2)  # rewritten files (same content, new mtime): redone
    again = prepare(root, "mmdino", cache, workers=2)
    after = {p.name: p.stat().st_mtime_ns for p in (cache / "parts" / "train").glob("*.npz")}
    assert [name for name in parts if parts[name] != after[name]] == ["sub002.npz"]
    assert again == report
    index, arrays = cached(cache)
    assert index["key"] != before[0]["key"] and index["ids"] == before[0]["ids"]
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, before[1][name])


def test_cli_prints_summary(tmp_path, capsys):
    for n, split in [(1, "train"), (2, "val")]:
        write_subject(tmp_path / "root", "brats2023", n, split=split)
    main(["--root", str(tmp_path / "root"), "--layout", "brats2023", "--output", str(tmp_path / "cache"),
          "--workers", "1", "--min-tumour-voxels", "10"])
    out = capsys.readouterr().out
    assert "2 subjects kept {'train': 1, 'val': 1}" in out and "skipped 0 subject(s)" in out
    slices = np.load(tmp_path / "cache" / "val" / "slices.npy")
    for axis in range(3):  # slices under 10 voxels are dropped, but the largest of each axis stays
        counts = slices[slices[:, 1] == axis, 3]
        assert (counts >= 10).all() or len(counts) == 1


def test_seg_labels_keep_brats_values_and_map_brats2023_enhancing():
    seg = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan, 0.9999])
    np.testing.assert_array_equal(seg_labels(seg), [0, 1, 2, 4, 4, 0, 1])


def test_a_cache_of_another_version_is_refused_with_the_fix(cohort, tmp_path):
    _, cache, _, _ = cohort
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    index = json.loads((cache / "train" / "index.json").read_text())
    del index["version"]  # caches before version 2 carry no version
    (old / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"made by cache version 1, .* delete it or re-run"):
        CachedSplit(old, "train")

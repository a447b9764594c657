"""Physical field of view: a crop spans 96 x spacing mm whatever the voxel size of the scan."""

import json

import numpy as np
import pytest
from test_cohort import subject_files, write_nifti

from mmdino_jax.constants import SEQUENCES
from mmdino_jax.data.prepare import CROP, crop_axis, prepare
from mmdino_jax.data.resample import axis_grid

EXTENT_MM = (160.0, 80.0, 24.0)  # x: wider than a 96 mm crop (the crop is shifted inside), y: narrower (padded)
TUMOUR_MM, RADIUS_MM = (30.0, 40.0, 12.0), 10.0


def scan(voxel_mm):
    """(images (4, X, Y, Z), tumour mask) of one physical object sampled at voxel centres of ``voxel_mm``.

    The images vary in-plane only, smoothly (features >= 20 mm), differently per sequence."""
    axes = [(np.arange(round(e / v)) + 0.5) * v for e, v in zip(EXTENT_MM, voxel_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    images = np.stack([100 + 40 * np.sin(2 * np.pi * (x / (40 + 10 * k) + y / 60)) + 30 * np.cos(2 * np.pi * y / 50)
                       + 0 * z for k in range(len(SEQUENCES))]).astype(np.float32)
    mask = (x - TUMOUR_MM[0]) ** 2 + (y - TUMOUR_MM[1]) ** 2 + (z - TUMOUR_MM[2]) ** 2 < RADIUS_MM ** 2
    return images, mask


def largest_axial(voxel_mm, spacing=1.0):
    images, mask = scan(voxel_mm)
    crops, segs, rows = crop_axis(images, mask, axis=2, min_voxels=mask.size + 1, voxel_mm=voxel_mm,
                                  spacing=spacing)
    return crops[0].astype(np.float32), segs[0]


def test_axis_grid_at_the_scan_resolution_is_the_plain_window():
    for centre, length, first in [(10, 200, 0), (100, 200, 52), (195, 200, 104)]:
        grid = axis_grid(centre, length, 1.0, 1.0, CROP)
        np.testing.assert_array_equal(grid.positions, first + np.arange(CROP))
        assert (grid.start, grid.stop) == (0, CROP)
    grid = axis_grid(5, 20, 1.0, 1.0, CROP)  # shorter than the crop: centred, 38 pixels of padding before
    np.testing.assert_array_equal(grid.positions, np.arange(CROP) - 38)
    assert (grid.start, grid.stop) == (38, 58)
    grid = axis_grid(40, 80, 2.0, 1.0, CROP)  # 2 mm voxels, 1 mm pixels: half-voxel steps, 96 mm wide
    np.testing.assert_allclose(np.diff(grid.positions), 0.5)
    centre_mm = (40 + 0.5) * 2.0  # from the scan's edge; the pixel [81, 82) mm holding it is pixel 48
    assert (grid.positions[CROP // 2] + 0.5) * 2.0 == pytest.approx(centre_mm + 0.5)


@pytest.mark.parametrize("voxel_mm", [(2.0, 2.0, 2.0), (0.5, 0.5, 3.0), (1.0, 2.0, 4.0)])
def test_crop_covers_the_same_96_mm_at_any_voxel_size(voxel_mm):
    reference_images, reference_seg = largest_axial((1.0, 1.0, 1.0))
    images, seg = largest_axial(voxel_mm)
    assert images.shape == (len(SEQUENCES), CROP, CROP)
    # y is 80 mm: 8 px of padding on each side, zero in both
    assert not images[:, :, :8].any() and not images[:, :, 88:].any() and not seg[:, 88:].any()
    np.testing.assert_allclose(images, reference_images, atol=0.04)
    assert np.mean(seg != reference_seg) < 0.02  # nearest-voxel labels differ only along the tumour border
    assert abs(int(seg.sum()) - int(reference_seg.sum())) < 0.1 * reference_seg.sum()


def test_a_coarser_spacing_widens_the_field_of_view():
    fine, _ = largest_axial((1.0, 1.0, 1.0), spacing=1.0)
    coarse, coarse_seg = largest_axial((1.0, 1.0, 1.0), spacing=2.0)  # 192 mm: the whole 160 x 80 mm slice
    assert coarse_seg.sum() == pytest.approx(np.pi * RADIUS_MM ** 2 / 4, rel=0.1)
    assert np.count_nonzero(coarse[0].any(axis=1)) == 80 and np.count_nonzero(coarse[0].any(axis=0)) == 40
    assert np.count_nonzero(fine[0].any(axis=1)) == 96


def test_prepare_resamples_nifti_by_its_affine_and_records_the_spacing(tmp_path):
    root = tmp_path / "root"
    for number, voxel_mm in [(1, (1.0, 1.0, 1.0)), (2, (2.0, 2.0, 2.0))]:
        _, paths = subject_files(root, "mmdino", number)
        images, mask = scan(voxel_mm)
        affine = np.diag([*voxel_mm, 1.0])
        for i, name in enumerate(SEQUENCES):
            write_nifti(paths[name], images[i], affine)
        write_nifti(paths["seg"], mask.astype(np.uint8), affine)
    report = prepare(root, "mmdino", tmp_path / "cache", workers=1, spacing=1.0)
    assert report["spacing_mm"] == 1.0
    assert json.loads((tmp_path / "cache" / "report.json").read_text())["spacing_mm"] == 1.0
    crops = np.load(tmp_path / "cache" / "train" / "images.npy").astype(np.float32)
    slices = np.load(tmp_path / "cache" / "train" / "slices.npy")
    axial = [np.flatnonzero((slices[:, 0] == s) & (slices[:, 1] == 2))[np.argmax(
        slices[(slices[:, 0] == s) & (slices[:, 1] == 2), 3])] for s in (0, 1)]
    np.testing.assert_allclose(crops[axial[1]], crops[axial[0]], atol=0.04)

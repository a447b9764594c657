"""The physical field of view of a cached crop: a fixed-size pixel grid at a fixed spacing in mm.

A crop of ``size`` pixels at ``spacing`` mm spans ``size * spacing`` mm whatever the voxel size of the scan
(1 mm BraTS, a 2 mm phantom, anisotropic clinical scans). Along each in-plane axis the crop's pixels are
sampled from the slice by linear interpolation, widened to a triangle of ``spacing / voxel`` voxels when
the crop is coarser than the scan (antialiasing); masks and label maps take the nearest voxel. When the
spacing equals the voxel size the samples fall on voxel centres and the crop is an exact copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Crop pixels whose centre lies within this many mm outside the scan's edge still count as inside.
EDGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class AxisGrid:
    """Where the crop's pixels fall on one axis of the slice: ``positions`` (size,) in voxel indices, and the
    range ``[start, stop)`` of pixels that lie inside the scan (the others are zero padding)."""

    positions: np.ndarray
    start: int
    stop: int

    def linear_weights(self, length: int, support: float) -> np.ndarray:
        """(size, length) interpolation weights: a triangle of half-width ``support`` voxels around each
        position, normalised over the voxels that exist; rows of padding pixels are zero."""
        taps = np.arange(length)[None, :] - self.positions[:, None]
        weights = np.maximum(0.0, 1.0 - np.abs(taps) / support)
        weights[:self.start] = 0.0
        weights[self.stop:] = 0.0
        total = weights.sum(axis=1, keepdims=True)
        return (weights / np.where(total > 0, total, 1.0)).astype(np.float32)

    def nearest(self, length: int) -> np.ndarray:
        """(size,) index of the nearest voxel of each pixel (clamped at the edges)."""
        return np.clip(np.rint(self.positions), 0, length - 1).astype(np.intp)


def axis_grid(centre: int, length: int, voxel_mm: float, spacing_mm: float, size: int) -> AxisGrid:
    """The crop's pixel grid on an axis of ``length`` voxels of ``voxel_mm``, centred on voxel ``centre``.

    Crop pixels are laid on a lattice of ``spacing_mm`` that starts at the scan's outer edge; the crop starts
    ``size // 2`` pixels before the pixel holding the centre voxel's centre, shifted back inside the scan
    where it would cross an edge, and is centred on the scan (zero-padded) where the scan is shorter.
    """
    extent, crop = length * voxel_mm, size * spacing_mm
    if extent <= crop:
        first = -np.floor((crop - extent) / (2 * spacing_mm)) * spacing_mm
    else:
        first = (np.floor((centre + 0.5) * voxel_mm / spacing_mm) - size // 2) * spacing_mm
        first = min(max(first, 0.0), extent - crop)
    centres_mm = first + (np.arange(size) + 0.5) * spacing_mm
    inside = np.flatnonzero((centres_mm >= -EDGE_TOLERANCE) & (centres_mm <= extent + EDGE_TOLERANCE))
    return AxisGrid(centres_mm / voxel_mm - 0.5, int(inside[0]), int(inside[-1]) + 1)


def resample_plane(images: np.ndarray, labels: np.ndarray, rows: AxisGrid, cols: AxisGrid,
                   voxel_mm: tuple[float, float], spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample images (C, H, W) linearly and labels (H, W) at the nearest voxel on the rows x cols grid;
    returns ((C, size, size) float32, (size, size) of the labels' dtype); padding pixels are zero."""
    h, w = labels.shape
    r = rows.linear_weights(h, max(1.0, spacing_mm / voxel_mm[0]))
    c = cols.linear_weights(w, max(1.0, spacing_mm / voxel_mm[1]))
    out_images = r @ np.ascontiguousarray(images, np.float32) @ c.T
    out_labels = labels[np.ix_(rows.nearest(h), cols.nearest(w))]
    out_labels[:rows.start] = 0
    out_labels[rows.stop:] = 0
    out_labels[:, :cols.start] = 0
    out_labels[:, cols.stop:] = 0
    return out_images, out_labels

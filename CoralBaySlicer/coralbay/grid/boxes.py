"""Index boxes: half-open boxes of voxel indices on a grid, and the boxes the pipeline needs
(body crop, ROI, the input voxels a resampling reads, the input sub-grid a result goes back to).

Why one module: preprocessing (crop, ROI) and restoring (back onto the input grid) must agree
on every box; they read the same functions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class IndexBox:
    """A half-open box [lower, upper) of voxel indices (x, y, z) on some grid."""

    lower: tuple[int, int, int]
    upper: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(int(u - l) for l, u in zip(self.lower, self.upper))  # type: ignore[return-value]

    def is_empty(self) -> bool:
        return any(s <= 0 for s in self.size)


def corner_points(lo: Sequence[float], hi: Sequence[float]) -> list[tuple[float, float, float]]:
    """The 8 corners of the box spanned by `lo` and `hi` (any coordinates)."""
    return [(float(x), float(y), float(z)) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]


def corners_lps(image: sitk.Image, box: IndexBox) -> np.ndarray:
    """Physical LPS positions (8, 3) of the outer corners of a voxel box (voxel edges, not centres)."""
    lo = np.asarray(box.lower, float) - 0.5
    hi = np.asarray(box.upper, float) - 0.5
    return np.asarray([image.TransformContinuousIndexToPhysicalPoint(p) for p in corner_points(lo, hi)])


def lps_box_to_index_box(image: sitk.Image, lower_lps: Sequence[float], upper_lps: Sequence[float]) -> IndexBox:
    """The voxels of `image` whose centres lie inside a physical LPS box (any orientation)."""
    lo = np.minimum(lower_lps, upper_lps)
    hi = np.maximum(lower_lps, upper_lps)
    idx = np.asarray([image.TransformPhysicalPointToContinuousIndex(p) for p in corner_points(lo, hi)])
    size = np.asarray(image.GetSize())
    lower = np.clip(np.ceil(idx.min(axis=0) - 1e-6), 0, size).astype(int)
    upper = np.clip(np.floor(idx.max(axis=0) + 1e-6) + 1, 0, size).astype(int)
    return IndexBox(tuple(lower), tuple(upper))


def foreground_box(image: sitk.Image, threshold_hu: float, margin_mm: float) -> IndexBox:
    """Bounding box of voxels above `threshold_hu` (the body and table), grown by a margin.

    Why a plain threshold box: it is predictable, cheap on 500^3 volumes and never cuts anatomy;
    the gain is in dropping the air around the patient, which holds nothing to segment.
    """
    array = sitk.GetArrayViewFromImage(image)  # (z, y, x)
    mask = array > threshold_hu
    size = image.GetSize()
    if not mask.any():
        return IndexBox((0, 0, 0), tuple(size))  # type: ignore[arg-type]
    bounds = []
    for axis in (2, 1, 0):  # x, y, z from the (z, y, x) array
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bounds.append((hits[0], hits[-1] + 1))
    margin = [int(np.ceil(margin_mm / s)) for s in image.GetSpacing()]
    lower = tuple(max(0, b[0] - m) for b, m in zip(bounds, margin))
    upper = tuple(min(n, b[1] + m) for b, m, n in zip(bounds, margin, size))
    return IndexBox(lower, upper)  # type: ignore[arg-type]


def intersect(a: IndexBox, b: IndexBox) -> IndexBox:
    return IndexBox(tuple(max(x, y) for x, y in zip(a.lower, b.lower)),  # type: ignore[arg-type]
                    tuple(min(x, y) for x, y in zip(a.upper, b.upper)))


def covering_box(source: sitk.Image, target: sitk.Image, context: int) -> IndexBox:
    """The voxels of `source` that linear interpolation at `target`'s voxel centres reads, plus
    `context` voxels on each side (clipped to `source`, never empty)."""
    last = np.asarray(target.GetSize(), float) - 1.0
    idx = np.asarray([source.TransformPhysicalPointToContinuousIndex(target.TransformContinuousIndexToPhysicalPoint(p))
                      for p in corner_points((0.0, 0.0, 0.0), last)])
    size = np.asarray(source.GetSize())
    lower = np.clip(np.floor(idx.min(axis=0)) - context, 0, size - 1).astype(int)
    upper = np.clip(np.ceil(idx.max(axis=0)) + 1 + context, lower + 1, size).astype(int)
    return IndexBox(tuple(int(v) for v in lower), tuple(int(v) for v in upper))  # type: ignore[arg-type]


def crop(image: sitk.Image, box: IndexBox) -> sitk.Image:
    """The voxels of `box` as an image with their true geometry (origin moved accordingly)."""
    if box.lower == (0, 0, 0) and box.size == image.GetSize():
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in box.size], [int(v) for v in box.lower])


def input_subgrid(image: sitk.Image, box: IndexBox) -> sitk.Image:
    """An empty image with the geometry of `box` of the input grid (same spacing/direction)."""
    sub = sitk.Image([int(s) for s in box.size], sitk.sitkUInt8)
    sub.SetSpacing(image.GetSpacing())
    sub.SetDirection(image.GetDirection())
    sub.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in box.lower]))
    return sub

"""The model grid: where the network's voxels lie for a given input, box and bundle spacing.

The model grid is axis-aligned in RAS (x toward the patient's right, y anterior, z superior:
LPS direction diag(-1, -1, 1)) at the bundle's spacing, the orientation MONAI's
`Orientation("RAS")` + `Spacing` give and eva trains with, so eva-trained heads see the anatomy
the way they learned it. Tensors are (X, Y, Z), MONAI's order. Reorientation, oblique
directions and resampling are done in one interpolation through physical space (no
accumulated interpolation error).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.grid.boxes import IndexBox, corner_points, corners_lps
from coralbay.grid.windows import window_starts

RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # in ITK's LPS frame


def reference_lattice(image: sitk.Image, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Origin (along the RAS grid's own axes) and size of the whole image's model grid.

    It is the grid MONAI's `Orientation("RAS")` + `Spacing` give for an axis-aligned scan: first
    voxel at the input's first voxel centre, round(extent / spacing + 1) voxels. Why every model
    grid is a piece of this one: the samples the network sees then do not depend on the body crop
    or ROI (a crop only drops voxels), and they are MONAI's samples, so both paths agree.
    """
    direction = np.asarray(RAS_DIRECTION).reshape(3, 3)
    last = np.asarray(image.GetSize(), float) - 1.0
    centres = np.asarray([image.TransformContinuousIndexToPhysicalPoint(p)
                          for p in corner_points((0.0, 0.0, 0.0), last)]) @ direction
    lo, hi = centres.min(axis=0), centres.max(axis=0)
    spacing = np.asarray(spacing, float)
    return lo, np.maximum(1, np.round((hi - lo) / spacing + 1.0).astype(int))


def window_span(lower: int, upper: int, size: int, window: int, overlap: float) -> tuple[int, int]:
    """The voxels [a, b) covered by the sliding windows, placed on the whole grid of `size`, that
    touch [lower, upper).

    Windows are placed as the sliding-window loop places them (`window_starts`), so the windows
    evaluated on [a, b) are exactly the whole-grid windows that reach the region, and its voxels
    are blended from the same windows as on the whole grid.
    """
    touching = [t for t in window_starts(size, window, overlap) if t < upper and t + window > lower]
    return min(touching), min(max(touching) + window, size)


def model_grid(image: sitk.Image, box: IndexBox, spacing: Sequence[float],
               windows: tuple[Sequence[int], float] | None = None) -> sitk.Image:
    """The piece of the whole image's RAS model grid (`reference_lattice`) that covers `box`,
    grown to whole sliding windows when `windows` = (window size, overlap) is given."""
    direction = np.asarray(RAS_DIRECTION).reshape(3, 3)
    origin, full = reference_lattice(image, spacing)
    spacing = np.asarray(spacing, float)
    corners = corners_lps(image, box) @ direction  # voxel edges along the grid's own axes
    # Every model voxel whose cell [k - 1/2, k + 1/2) overlaps the box's extent.
    lower = np.floor((corners.min(axis=0) - origin) / spacing + 0.5).astype(int)
    upper = np.ceil((corners.max(axis=0) - origin) / spacing + 0.5).astype(int)
    lower = np.clip(lower, 0, full - 1)
    upper = np.clip(np.maximum(upper, lower + 1), 1, full)
    if windows is not None:
        size, overlap = windows
        for axis in range(3):
            lower[axis], upper[axis] = window_span(int(lower[axis]), int(upper[axis]), int(full[axis]),
                                                   int(size[axis]), overlap)
    grid = sitk.Image([int(u - l) for l, u in zip(lower, upper)], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(RAS_DIRECTION)
    grid.SetOrigin([float(v) for v in direction @ (origin + lower * spacing)])
    return grid


def to_xyz(array_zyx: np.ndarray) -> np.ndarray:
    """SimpleITK's (z, y, x) array as MONAI's (x, y, z) order (a view)."""
    return array_zyx.transpose(2, 1, 0)


def to_zyx(array_xyz: np.ndarray) -> np.ndarray:
    return array_xyz.transpose(2, 1, 0)


def grid_image(array_xyz: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Wrap an (X, Y, Z) array as an image on `grid`'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(to_zyx(array_xyz)))
    image.CopyInformation(grid)
    return image



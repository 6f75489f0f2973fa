"""Resampling an irregular stack of DICOM slices onto a regular grid through physical space.

Why: a series with unevenly spaced slices (one missing slice, variable spacing) or with slices
shifted sideways along the stack (gantry tilt) is not a regular volume; stacking it as if it were
distorts the anatomy. We know where every slice lies (`StackGeometry`), so each voxel of a regular
output grid takes its value from the two acquired slices that bracket it along the slice normal,
each sampled at the voxel's own in-plane position (bilinear), then interpolated linearly along the
normal. Linear functions of position are reproduced exactly, which the tests use as the check.

The output grid has the slices' row and column directions and their normal as axes (an oblique,
orthonormal direction matrix for a tilted series), the in-plane pixel spacing, and a slice step
equal to the median acquired step (adjusted so the first and last slices fall on the grid). A
tilted stack gets a wider in-plane grid covering every slice; voxels outside all acquired slices
get the lowest value of the series (air or padding), never an invented tissue value.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from coralbay.io.dicom_checks import StackGeometry



def regular_grid(geometry: StackGeometry) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """(size, spacing, origin) of the regular output grid, in ITK's x, y, z order."""
    dx, dy = geometry.pixel_spacing
    offsets = geometry.in_plane_offsets
    low = offsets.min(axis=0)
    columns, rows = geometry.size
    nx = columns + int(round((offsets[:, 0].max() - low[0]) / dx))
    ny = rows + int(round((offsets[:, 1].max() - low[1]) / dy))
    extent = float(geometry.along[-1])
    nz = int(round(extent / geometry.median_step)) + 1
    dz = extent / (nz - 1)
    origin = geometry.positions[0] + low[0] * geometry.row + low[1] * geometry.col
    return (nx, ny, nz), (dx, dy, dz), origin


def resample_stack(slices: np.ndarray, geometry: StackGeometry) -> sitk.Image:
    """A regular volume from `slices` (n, rows, columns), slice k lying where geometry says."""
    from scipy import ndimage

    (nx, ny, nz), (dx, dy, dz), origin = regular_grid(geometry)
    along = geometry.along
    offsets = geometry.in_plane_offsets - geometry.in_plane_offsets.min(axis=0)
    fill = float(slices.min())
    out = np.empty((nz, ny, nx), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}

    def placed(k: int) -> np.ndarray:
        """Slice k sampled on the output's in-plane grid (bilinear, fill outside)."""
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            shift = (-offsets[k, 1] / dy, -offsets[k, 0] / dx)  # array order: rows (y), columns (x)
            cache[k] = ndimage.affine_transform(slices[k].astype(np.float32), matrix=np.ones(2),
                                                offset=shift, output_shape=(ny, nx), order=1,
                                                mode="constant", cval=fill)
        return cache[k]

    for z in range(nz):
        w = min(z * dz, float(along[-1]))
        k = int(np.clip(np.searchsorted(along, w, side="right") - 1, 0, len(along) - 2))
        t = float(np.clip((w - along[k]) / (along[k + 1] - along[k]), 0.0, 1.0))
        out[z] = placed(k) if t < 1e-6 else placed(k + 1) if t > 1 - 1e-6 else \
            (1 - t) * placed(k) + t * placed(k + 1)
    if np.issubdtype(slices.dtype, np.integer):
        info = np.iinfo(slices.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(slices.dtype)
    image = sitk.GetImageFromArray(out)
    image.SetSpacing((dx, dy, dz))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(np.stack([geometry.row, geometry.col, geometry.normal], axis=1).ravel()))
    return image

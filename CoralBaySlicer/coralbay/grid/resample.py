"""Resampling onto another grid through physical space: linear (anti-aliased) for intensities,
nearest neighbour for labels, and `bring_onto_grid` for a reference label map.

Why physical space: a reference may be stored in another orientation, spacing or field of view
than the prediction (e.g. a NIfTI stored LAS against a DICOM series stored LPS). Comparing arrays
index by index would compare different anatomy; ITK's resampler maps every prediction voxel
centre to the reference's physical space. Nearest-neighbour interpolation keeps label values
intact (no invented labels at boundaries between structures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from coralbay.errors import InputError
from coralbay.grid.boxes import IndexBox


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within `tol`)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


@dataclass
class GridMatch:
    """The reference on the prediction's grid, and what it took to get there."""

    image: sitk.Image
    resampled: bool
    coverage: float = 1.0  # fraction of prediction voxels whose centre lies in the reference's field of view
    lost_reference_voxels: dict[int, int] = field(default_factory=dict)  # label -> voxels outside the prediction


def resample_nearest(image: sitk.Image, grid: sitk.Image, default: int = 0) -> sitk.Image:
    """`image` sampled at the voxel centres of `grid` (nearest neighbour, `default` outside)."""
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, default,
                         image.GetPixelID())


def field_of_view_mask(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Boolean array on `grid`: True where the voxel centre lies inside `image`'s field of view."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return sitk.GetArrayFromImage(resample_nearest(ones, grid)).astype(bool)  # not a view: the image is temporary


def bring_onto_grid(reference: sitk.Image, prediction: sitk.Image) -> GridMatch:
    """The reference on the prediction's grid; refuse when the two fields of view are disjoint."""
    if same_grid(reference, prediction):
        return GridMatch(reference, resampled=False)
    inside = field_of_view_mask(reference, prediction)
    if not inside.any():
        raise InputError("The prediction and the reference do not overlap in physical space "
                         "(their fields of view are disjoint); check that both belong to the same scan.")
    resampled = resample_nearest(reference, prediction)
    # Reference voxels that no prediction voxel can see are silently dropped by resampling;
    # count them per label so the report can say which structures were cut off.
    seen = field_of_view_mask(prediction, reference)
    ref_array = sitk.GetArrayViewFromImage(reference)
    outside = ref_array[~seen]
    counts = np.bincount(outside[outside > 0].astype(np.int64)) if outside.size else np.zeros(0)
    lost = {int(v): int(n) for v, n in enumerate(counts) if n and v}
    return GridMatch(resampled, resampled=True, coverage=float(inside.mean()), lost_reference_voxels=lost)


ANTIALIAS_FACTOR = 0.4  # sigma = factor * sqrt(target^2 - source^2) per axis that is downsampled


def antialias_sigmas(image: sitk.Image, grid: sitk.Image) -> list[float]:
    """Gaussian sigma (mm) per input axis before downsampling onto `grid`; 0 where not downsampled.

    Why: linear interpolation from 0.6 mm to 1.5 mm samples instead of averaging, so thin or
    small structures alias (a 1.4 mL nodule came back at Dice 0.945 without this, 0.97 with it).
    The target spacing along an input axis is that of the grid axis most aligned with it.
    """
    d_in = np.asarray(image.GetDirection()).reshape(3, 3)
    d_out = np.asarray(grid.GetDirection()).reshape(3, 3)
    alignment = np.abs(d_out.T @ d_in)  # [grid axis, input axis]
    sigmas = []
    for axis, source in enumerate(image.GetSpacing()):
        target = grid.GetSpacing()[int(np.argmax(alignment[:, axis]))]
        sigmas.append(ANTIALIAS_FACTOR * float(np.sqrt(target ** 2 - source ** 2)) if target > source * 1.05 else 0.0)
    return sigmas


def resample_to_grid(image: sitk.Image, grid: sitk.Image, default: float, antialias: bool = True) -> sitk.Image:
    """Float32 linear resampling onto `grid` through physical space, anti-aliased when downsampling."""
    moving = sitk.Cast(image, sitk.sitkFloat32)
    if antialias:
        for axis, sigma in enumerate(antialias_sigmas(image, grid)):
            if sigma > 0 and image.GetSize()[axis] >= 4:
                moving = sitk.RecursiveGaussian(moving, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
    return sitk.Resample(moving, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def replicate_edges(part: sitk.Image, box: IndexBox, image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """`part` (the voxels of `box` of `image`) with its slices at the scan's own edges repeated
    outward, far enough for every point of `grid`.

    Why: the model grid may reach up to half a model voxel beyond the last voxel centre. There
    linear interpolation then gives the edge value (MONAI's `Spacing` "border" padding) instead of
    a wall of air, which would draw a false skin line where the field of view cuts the body.
    """
    reach = [int(math.ceil(max(grid.GetSpacing()) / s)) + 1 for s in image.GetSpacing()]
    lower = [r if lo == 0 else 0 for r, lo in zip(reach, box.lower)]
    upper = [r if up == n else 0 for r, up, n in zip(reach, box.upper, image.GetSize())]
    if not any(lower) and not any(upper):
        return part
    return sitk.ZeroFluxNeumannPad(part, lower, upper)

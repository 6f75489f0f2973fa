"""Bring the reference label map onto the prediction's grid through physical space.

Why physical space: a reference may be stored in another orientation, spacing or field of view
than the prediction (e.g. a NIfTI stored LAS against a DICOM series stored LPS). Comparing arrays
index by index would compare different anatomy; ITK's resampler maps every prediction voxel
centre to the reference's physical space. Nearest-neighbour interpolation keeps label values
intact (no invented labels at boundaries between structures).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from coralbay.errors import InputError
from coralbay.io.volumes import same_grid


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

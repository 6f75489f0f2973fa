"""From the head's coarse logits to a full 3D mask on the input grid, its uncertainty and next click.

The feature grid is coarse (4 mm for the demo bundle), so the head's logits are resampled onto the
input grid and sharpened there by the scan's own intensities: a Gaussian intensity model of the
structure (voxels the head is sure of) against its surroundings (voxels just outside) adds a
log-likelihood ratio to the logits, the sum is smoothed by one input voxel (a cheap stand-in for a
CRF's pairwise term), thresholded, and the connected components that hold a positive prompt are
kept. The resampled box is the whole region where the head gives the structure any chance (grown
by a margin), never a crop around the prompt, so long structures are not cut mid-way.
Finished structures are removed from the answer (never overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from coralbay.interactive.engine import grid_image

CANDIDATE_LOGIT = -3.0       # model voxels above this may belong to the structure
INTENSITY_GAIN = 0.7         # weight of the intensity log-likelihood ratio (logit units)
LLR_CLIP = 4.0


@dataclass
class Answer:
    """One structure's mask on the input grid (z, y, x) and what the user may want next."""

    mask: np.ndarray                    # bool, input grid (z, y, x)
    uncertainty: np.ndarray             # float32, model grid (X, Y, Z): p(1-p)*4 in [0, 1]
    next_click_lps: tuple[float, float, float] | None
    next_click_positive: bool | None


def input_box_of(model_mask_xyz: np.ndarray, grid: sitk.Image, image: sitk.Image, margin_mm: float
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The input-grid index box (lower, upper; x, y, z) covering the model voxels of a mask + margin."""
    where = np.argwhere(model_mask_xyz)
    if where.size == 0:
        return None
    lo, hi = where.min(0) - 0.5, where.max(0) + 0.5
    corners = [grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in (x, y, z)])
               for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    idx = np.asarray([image.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    margin = np.ceil(margin_mm / np.asarray(image.GetSpacing())).astype(int)
    size = np.asarray(image.GetSize())
    lower = np.clip(np.floor(idx.min(0)).astype(int) - margin, 0, size - 1)
    upper = np.clip(np.ceil(idx.max(0)).astype(int) + 1 + margin, lower + 1, size)
    return lower, upper


def resample_logits(logits_xyz: np.ndarray, grid: sitk.Image, image: sitk.Image,
                    lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Linear resampling of model-grid logits onto the input box; (z, y, x) float32."""
    sub = sitk.Image([int(v) for v in upper - lower], sitk.sitkUInt8)
    sub.SetSpacing(image.GetSpacing())
    sub.SetDirection(image.GetDirection())
    sub.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lower]))
    source = grid_image(np.ascontiguousarray(logits_xyz, np.float32), grid)
    out = sitk.Resample(source, sub, sitk.Transform(), sitk.sitkLinear, -10.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _gaussian_llr(values: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> np.ndarray | None:
    if inside.sum() < 20 or outside.sum() < 20:
        return None
    mi, si = float(values[inside].mean()), float(values[inside].std()) + 5.0
    mo, so = float(values[outside].mean()), float(values[outside].std()) + 5.0
    # the log-likelihood ratio of two Gaussians is a quadratic in the value: one polynomial pass
    a = np.float32(0.5 / so ** 2 - 0.5 / si ** 2)
    b = np.float32(mi / si ** 2 - mo / so ** 2)
    c = np.float32(0.5 * mo ** 2 / so ** 2 - 0.5 * mi ** 2 / si ** 2 + np.log(so / si))
    llr = (a * values + b) * values + c
    return np.clip(llr, -LLR_CLIP, LLR_CLIP, out=llr).astype(np.float32, copy=False)


def full_resolution_mask(logits_xyz: np.ndarray, grid: sitk.Image, image: sitk.Image, hu_zyx: np.ndarray,
                         positive_voxels_zyx: list[tuple[int, int, int]], forbidden_zyx: np.ndarray | None,
                         allowed_box: tuple[np.ndarray, np.ndarray] | None = None,
                         intensity_gain: float = INTENSITY_GAIN) -> np.ndarray:
    """The structure's mask on the whole input grid (z, y, x), bool."""
    mask = np.zeros(hu_zyx.shape, bool)
    candidates = ndimage.binary_dilation(logits_xyz > CANDIDATE_LOGIT)
    box = input_box_of(candidates, grid, image, margin_mm=2.0 * max(grid.GetSpacing()))
    if box is None:
        return mask
    lower, upper = box
    if allowed_box is not None:
        lower, upper = np.maximum(lower, allowed_box[0]), np.minimum(upper, allowed_box[1])
        if np.any(upper <= lower):
            return mask
    window = tuple(slice(int(lo), int(up)) for lo, up in zip(lower[::-1], upper[::-1]))
    logits = resample_logits(logits_xyz, grid, image, lower, upper)
    hu = hu_zyx[window].astype(np.float32)
    if intensity_gain:
        llr = _gaussian_llr(hu, logits > 2.0, (logits < -1.0) & (logits > -6.0))
        if llr is not None:
            logits += intensity_gain * llr
    sigma = [0.7 * min(image.GetSpacing()) / s for s in image.GetSpacing()[::-1]]
    logits = ndimage.gaussian_filter(logits, sigma)
    inside = logits > 0
    if forbidden_zyx is not None:
        inside &= ~forbidden_zyx[window]
    components, count = ndimage.label(inside)
    if count:
        keep = set()
        for v in positive_voxels_zyx:
            local = tuple(int(c) - int(w.start) for c, w in zip(v, window))
            if all(0 <= c < s for c, s in zip(local, inside.shape)) and components[local]:
                keep.add(int(components[local]))
        if not keep:
            sizes = ndimage.sum_labels(inside, components, index=np.arange(1, count + 1))
            keep = {int(np.argmax(sizes)) + 1}
        inside = np.isin(components, list(keep))
    mask[window] = inside
    return mask


def uncertainty_and_next_click(logits_xyz: np.ndarray, grid: sitk.Image
                               ) -> tuple[np.ndarray, tuple[float, float, float] | None, bool | None]:
    """Uncertainty p(1-p)*4 on the model grid and the suggested click: the deepest point of the
    largest uncertain region (p between 0.2 and 0.8), positive if the head leans to the structure."""
    p = 1.0 / (1.0 + np.exp(-np.clip(logits_xyz, -30, 30)))
    uncertainty = (4.0 * p * (1.0 - p)).astype(np.float32)
    region = (p > 0.2) & (p < 0.8)
    components, count = ndimage.label(region)
    if not count:
        return uncertainty, None, None
    sizes = ndimage.sum_labels(region, components, index=np.arange(1, count + 1))
    biggest = components == int(np.argmax(sizes)) + 1
    depth = ndimage.distance_transform_edt(np.pad(biggest, 1))[1:-1, 1:-1, 1:-1]
    voxel = np.unravel_index(int(np.argmax(depth)), depth.shape)
    point = grid.TransformIndexToPhysicalPoint([int(v) for v in voxel])
    return uncertainty, tuple(float(c) for c in point), bool(p[voxel] >= 0.5)

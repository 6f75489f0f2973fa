"""The simulated user of `coralbay eval-interactive`, and the classical seeded baseline.

Protocol (CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation"):
optionally a box first (the reference's bounding box), then clicks, each at the deepest point
(maximum of the Euclidean distance transform, in mm) of the largest error component, positive in
a missed region and negative in a false positive; the first click, with no prediction yet, at the
deepest point of the structure. Both methods get exactly the same clicks: the clicks follow our
method's errors (the user corrects what the tool shows), and the baseline answers each growing
set of clicks on its own.

Baseline: scikit-image's random walker (Grady 2006) on the scan's intensities, seeded by the
clicks (balls of 2 voxels), with the border of its working box as background. Its working box is
the box prompt, or the positive clicks' bounding box grown by 30 mm (a random walker needs
background seeds all round; the whole scan would cost minutes per click); it runs at >= 1.5 mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from coralbay.interactive.engine import dice_from_counts, surface_metrics

REPORT_AFTER = (1, 3, 5, 10)
NSD_TOLERANCE_MM = 2.0
BASELINE_MARGIN_MM = 30.0
BASELINE_SPACING_MM = 1.5


@dataclass
class Click:
    voxel_zyx: tuple[int, int, int]
    lps: tuple[float, float, float]
    positive: bool


@dataclass
class Curve:
    dice: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """The review package's Dice of two boolean masks (NaN when both are empty: undefined there)."""
    value = dice_from_counts(int(np.count_nonzero(prediction & reference)), int(np.count_nonzero(prediction)),
                             int(np.count_nonzero(reference)))
    return float("nan") if value is None else value


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def nsd(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """Normalised surface distance (surface Dice) at 2 mm, from the review package's surfaces."""
    if not prediction.any() or not reference.any():
        return 0.0
    box = bounding_box(prediction | reference, 2)
    value = surface_metrics(prediction[box], reference[box], spacing_zyx, NSD_TOLERANCE_MM)["surface_dice"]
    return float(value or 0.0)


def deepest_point(region: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[int, int, int]:
    """The voxel of `region` farthest (in mm) from its boundary."""
    box = bounding_box(region, 1)
    depth = ndimage.distance_transform_edt(region[box], sampling=spacing_zyx)
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(int(i + s.start) for i, s in zip(local, box))  # type: ignore[return-value]


def next_click(prediction: np.ndarray | None, reference: np.ndarray, image: sitk.Image) -> Click | None:
    """The challenge's next click, or None when the prediction is perfect."""
    spacing = tuple(image.GetSpacing()[::-1])
    if prediction is None:
        region, positive = reference, True
    else:
        missed, extra = reference & ~prediction, prediction & ~reference
        best, positive, region = 0, True, None
        for errors, sign in ((missed, True), (extra, False)):
            if not errors.any():
                continue
            box = bounding_box(errors, 1)
            components, count = ndimage.label(errors[box])
            sizes = np.bincount(components.ravel())[1:]
            k = int(np.argmax(sizes))
            if sizes[k] > best:
                best, positive = int(sizes[k]), sign
                region = np.zeros_like(errors)
                region[box] = components == k + 1
        if region is None:
            return None
    voxel = deepest_point(region, spacing)
    lps = image.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])
    return Click(voxel, tuple(float(c) for c in lps), positive)


def reference_box_lps(reference: np.ndarray, image: sitk.Image) -> tuple[list[float], list[float]]:
    """The reference's bounding box as two LPS corners (voxel centres of its extreme voxels)."""
    where = np.argwhere(reference)
    lo, hi = where.min(0)[::-1], where.max(0)[::-1]
    return (list(image.TransformIndexToPhysicalPoint([int(v) for v in lo])),
            list(image.TransformIndexToPhysicalPoint([int(v) for v in hi])))


def random_walker_answer(hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], clicks: list[Click],
                         box_zyx: tuple[np.ndarray, np.ndarray] | None, window_hu: tuple[float, float]) -> np.ndarray:
    """The baseline's mask for a set of clicks (bool, input grid)."""
    from skimage.segmentation import random_walker

    out = np.zeros(hu_zyx.shape, bool)
    positives = [c.voxel_zyx for c in clicks if c.positive]
    if not positives:
        return out
    if box_zyx is not None:
        lo, hi = box_zyx
        lo = np.maximum(lo - 2, 0)
        hi = np.minimum(hi + 3, hu_zyx.shape)
    else:
        pts = np.asarray(positives)
        margin = np.ceil(BASELINE_MARGIN_MM / np.asarray(spacing_zyx)).astype(int)
        lo = np.maximum(pts.min(0) - margin, 0)
        hi = np.minimum(pts.max(0) + 1 + margin, hu_zyx.shape)
    step = np.maximum(1, np.floor(BASELINE_SPACING_MM / np.asarray(spacing_zyx))).astype(int)
    crop = tuple(slice(int(a), int(b), int(s)) for a, b, s in zip(lo, hi, step))
    data = np.clip((hu_zyx[crop] - window_hu[0]) / (window_hu[1] - window_hu[0]), 0, 1)
    seeds = np.zeros(data.shape, np.int32)
    seeds[0], seeds[-1], seeds[:, 0], seeds[:, -1], seeds[:, :, 0], seeds[:, :, -1] = 2, 2, 2, 2, 2, 2
    for c in clicks:
        local = (np.asarray(c.voxel_zyx) - lo) // step
        if np.any(local < 0) or np.any(local >= data.shape):
            continue
        sl = tuple(slice(max(0, int(v) - 2), int(v) + 3) for v in local)
        seeds[sl] = 1 if c.positive else 2
    if data.shape and min(data.shape) < 2:
        return out
    labels = random_walker(data, seeds, beta=130, mode="cg_j", tol=1e-3,
                           spacing=tuple(float(s * t) for s, t in zip(spacing_zyx, step)))
    small = labels == 1
    # back to full resolution in the crop (nearest)
    full = np.zeros(tuple(int(b - a) for a, b in zip(lo, hi)), bool)
    idx = np.ix_(*[np.minimum(np.arange(n) // s, m - 1) for n, s, m in zip(full.shape, step, small.shape)])
    full[:] = small[idx]
    out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = full
    return out


def curve_summary(curve: Curve) -> dict:
    def at(values: list[float]) -> dict[str, float | None]:
        return {str(n): (round(values[n - 1], 4) if len(values) >= n else None) for n in REPORT_AFTER}
    auc = float(np.mean(curve.dice)) if curve.dice else None
    return {"dice_after": at(curve.dice), "nsd_after": at(curve.nsd),
            "dice_auc": None if auc is None else round(auc, 4), "dice_per_click": [round(d, 4) for d in curve.dice]}


def clicks_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, d in enumerate(curve) if d >= target), None)


Answerer = Callable[[Click | None], np.ndarray]

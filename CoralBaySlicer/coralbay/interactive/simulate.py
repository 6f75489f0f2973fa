"""The simulated user of `coralbay eval-interactive`: where it puts the box and each click, and how
an answer is scored. Two protocols, chosen by name (`PROTOCOLS`):

`official` (the default) mirrors the CVPR 2025 "Foundation Models for Interactive 3D Biomedical
Image Segmentation" challenge's scripts (JunMa11/CVPR-MedSegFMCompetition: `get_boxes.py` for the
box, `CVPR25_iter_eval.py` for the clicks and the metrics). Written from reading them, not copied;
each function below names the official rule it mirrors.

`ours` is the protocol this project used before (kept so that older figures can be reproduced):
first click at the deepest point of the structure, missed and extra voxels searched separately
(6-connectivity, depth in mm), a tight 3D box, DSC_AUC as the mean Dice over the clicks, NSD always
computed.

Every method clicks on its own errors: the simulated user looks only at the method's last answer
and the reference (see `evaluate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from coralbay.interactive.engine import dice_from_counts, surface_metrics

NSD_TOLERANCE_MM = 2.0
OFFICIAL_NSD_MIN_DICE = 0.2        # CVPR25_iter_eval.py: NSD only when Dice > 0.2, else 0
OFFICIAL_TIE_SEED = 42             # CVPR25_iter_eval.py sample_coord: np.random.seed(42) before each pick
OFFICIAL_BOX_SEED = 2025           # get_boxes.py: np.random.seed(2025)
OFFICIAL_BOX_MAX_SHIFT = 5         # get_boxes.py: np.random.randint(0, 6) voxels at 256 voxels
OFFICIAL_EDT_PAD = 0.25            # CVPR25_iter_eval.py compute_edt: 25 % zero padding around the crop
OFFICIAL_EDT_MAX_VOXELS = 60_000_000  # ... above which the EDT runs at half resolution
FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)   # 26-connectivity (cc3d connectivity=26)


@dataclass(frozen=True)
class Click:
    voxel_zyx: tuple[int, int, int]
    lps: tuple[float, float, float]
    positive: bool


@dataclass(frozen=True)
class VoxelBox:
    """A box prompt on the input grid: inclusive voxel bounds, array order (z, y, x)."""

    lower_zyx: tuple[int, int, int]
    upper_zyx: tuple[int, int, int]

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b + 1) for a, b in zip(self.lower_zyx, self.upper_zyx))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {"lower_zyx": list(self.lower_zyx), "upper_zyx": list(self.upper_zyx)}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """The review package's Dice of two boolean masks (NaN when both are empty: undefined there,
    as the official `compute_dice_coefficient`)."""
    value = dice_from_counts(int(np.count_nonzero(prediction & reference)), int(np.count_nonzero(prediction)),
                             int(np.count_nonzero(reference)))
    return float("nan") if value is None else value


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    where = np.argwhere(mask)
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def nsd(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """Our NSD: surface Dice at 2 mm from the review package's boundary voxels (the `ours` protocol)."""
    if not prediction.any() or not reference.any():
        return 0.0
    box = bounding_box(prediction | reference, 2)
    value = surface_metrics(prediction[box], reference[box], spacing_zyx, NSD_TOLERANCE_MM)["surface_dice"]
    return float(value or 0.0)


def official_nsd(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """CVPR25_iter_eval.py `compute_multi_class_nsd` for one class: surfel-area weighted surface Dice
    at 2 mm (DeepMind's surface-distance, which the challenge's SurfaceDice.py is), and 0 where the
    Dice is not above 0.2 (the official script does not compute it there).

    MONAI's `compute_surface_dice(use_subvoxels=True)` implements the same surfel definition; on a
    crop with a 2-voxel margin, which changes no surfel and no distance.
    """
    if not dice(prediction, reference) > OFFICIAL_NSD_MIN_DICE:
        return 0.0
    import warnings

    import torch
    from monai.metrics import compute_surface_dice

    box = bounding_box(prediction | reference, 2)
    both = [torch.from_numpy(np.ascontiguousarray(m[box]))[None, None].float() for m in (prediction, reference)]
    with warnings.catch_warnings():   # MONAI 1.5+ warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(both[0], both[1], [NSD_TOLERANCE_MM], include_background=True,
                                     spacing=[float(s) for s in spacing_zyx], use_subvoxels=True)
    return float(value.item())


def official_box(reference: np.ndarray, rng: np.random.RandomState | None = None) -> VoxelBox:
    """get_boxes.py `mask3D_to_bbox`: z from the structure's first to last slice; x and y from the
    middle one of its slices only (`z_indices[len // 2]` of the sorted unique z), widened on each
    side by a random 0-5 voxels scaled by the slice size / 256, clipped to the image.

    The official draws come from one global stream seeded 2025 across all files (in a process
    pool, so per case not reproducible); here each structure draws from its own RandomState(2025)
    unless `rng` is given.
    """
    rng = np.random.RandomState(OFFICIAL_BOX_SEED) if rng is None else rng
    z = np.unique(np.nonzero(reference.any(axis=(1, 2)))[0])
    z_mid = int(z[len(z) // 2])
    ys, xs = np.nonzero(reference[z_mid])
    height, width = reference.shape[1:]
    shift = int(rng.randint(0, OFFICIAL_BOX_MAX_SHIFT + 1, 1)[0])
    shift_x, shift_y = int(shift * width / 256), int(shift * height / 256)
    return VoxelBox((int(z.min()), max(0, int(ys.min()) - shift_y), max(0, int(xs.min()) - shift_x)),
                    (int(z.max()), min(height - 1, int(ys.max()) + shift_y), min(width - 1, int(xs.max()) + shift_x)))


def tight_box(reference: np.ndarray) -> VoxelBox:
    """The `ours` protocol's box: the reference's 3D bounding box."""
    where = np.argwhere(reference)
    return VoxelBox(tuple(int(v) for v in where.min(0)), tuple(int(v) for v in where.max(0)))  # type: ignore[arg-type]


def _official_edt(component: np.ndarray) -> np.ndarray:
    """CVPR25_iter_eval.py `compute_edt` on a crop: the component's bounding box padded by 25 % of
    its size (at least 1 voxel) with zeros, Euclidean distance in voxels (no spacing); above 60 M
    voxels at half resolution (2x2x2 max-pooling, then repeated back)."""
    lo = np.argwhere(component).min(0)
    hi = np.argwhere(component).max(0) + 1
    crop_shape = hi - lo
    pad = np.maximum((crop_shape * OFFICIAL_EDT_PAD).astype(int), 1)
    padded = np.zeros(crop_shape + 2 * pad, np.uint8)
    padded[tuple(slice(p, p + c) for p, c in zip(pad, crop_shape))] = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    halved = padded.size > OFFICIAL_EDT_MAX_VOXELS
    if halved:  # skimage block_reduce(block_size=2, func=max): zero-pads to even sizes
        even = np.pad(padded, [(0, s % 2) for s in padded.shape])
        padded = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, even.shape[2] // 2, 2).max(axis=(1, 3, 5))
    edt = ndimage.distance_transform_edt(padded)
    if halved:
        edt = edt.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    out = np.zeros(component.shape, edt.dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = edt[tuple(slice(p, p + c) for p, c in zip(pad, crop_shape))]
    return out


def _official_pick(edt: np.ndarray) -> tuple[int, int, int]:
    """CVPR25_iter_eval.py `sample_coord`: every voxel at the maximum distance (C order), one chosen
    by `np.random.choice` right after `np.random.seed(42)` (a private RandomState(42), the same draw)."""
    candidates = np.argwhere(edt == edt.max())
    chosen = candidates[np.random.RandomState(OFFICIAL_TIE_SEED).choice(len(candidates))]
    return tuple(int(v) for v in chosen)  # type: ignore[return-value]


def _click(image: sitk.Image, voxel_zyx: tuple[int, int, int], positive: bool) -> Click:
    lps = image.TransformIndexToPhysicalPoint([int(v) for v in voxel_zyx[::-1]])
    return Click(voxel_zyx, tuple(float(c) for c in lps), positive)  # type: ignore[arg-type]


def official_click(prediction: np.ndarray | None, reference: np.ndarray, image: sitk.Image) -> Click | None:
    """CVPR25_iter_eval.py's refinement click, or None when the prediction is perfect.

    One error mask (prediction != reference: missed and extra voxels together); its 26-connected
    components (cc3d connectivity=26); the largest (`np.argmax` of the sizes: the first in raster
    order on a tie); the voxel deepest inside it by `compute_edt` (voxel units), ties broken by
    `sample_coord`; positive where the reference holds that voxel, negative where it does not.
    With no prediction yet (no box) the prediction is empty, so the first click is positive at the
    structure's centre, as in the official run without a box.
    """
    predicted = np.zeros(reference.shape, bool) if prediction is None else prediction
    error = predicted != reference
    if not error.any():
        return None
    box = bounding_box(error, 0)   # the components and their raster order are those of the full image
    components, _ = ndimage.label(error[box], structure=FULL_CONNECTIVITY)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = np.zeros(reference.shape, bool)
    largest[box] = components == int(np.argmax(sizes))
    edt = _official_edt(largest) * largest
    if not edt.any():   # official: sample the component itself when its EDT is empty
        edt = largest.astype(np.float64)
    voxel = _official_pick(edt)
    return _click(image, voxel, bool(reference[voxel]))


def deepest_point(region: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[int, int, int]:
    """The voxel of `region` farthest (in mm) from its boundary."""
    box = bounding_box(region, 1)
    depth = ndimage.distance_transform_edt(region[box], sampling=spacing_zyx)
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(int(i + s.start) for i, s in zip(local, box))  # type: ignore[return-value]


def next_click(prediction: np.ndarray | None, reference: np.ndarray, image: sitk.Image) -> Click | None:
    """The `ours` protocol's next click, or None when the prediction is perfect: the largest
    6-connected component of the missed voxels or of the extra voxels (searched separately), at its
    deepest point in mm; with no prediction, the deepest point of the structure."""
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
    return _click(image, deepest_point(region, spacing), positive)


def official_dsc_auc(dice_after_clicks: list[float]) -> float | None:
    """CVPR25_iter_eval.py: `cumulative_trapezoid(dscs[-n_clicks:], np.arange(n_clicks))[-1]`, the
    trapezoid area under Dice after clicks 1..n at unit steps (the box's answer is not in it; 5
    clicks give at most 4.0)."""
    values = np.asarray(dice_after_clicks, float)
    if len(values) < 2:
        return None
    return float(np.sum((values[1:] + values[:-1]) / 2.0))


def mean_auc(dice_after_clicks: list[float]) -> float | None:
    """The `ours` protocol's DSC_AUC: the mean Dice over the clicks."""
    return float(np.mean(dice_after_clicks)) if dice_after_clicks else None


def monotonicity(dice_steps: list[list[float | None]], drop: float = 0.02) -> dict:
    """Share of clicks after which Dice fell by more than `drop` from the answer before the click
    (the box's answer before the first click; without a box the first click has no answer before
    it and is not counted). `dice_steps`: per structure, Dice after the box (or None) then after
    each click."""
    falls = clicks = 0
    for steps in dice_steps:
        for before, after in zip(steps[:-1], steps[1:]):
            if before is None:
                continue
            clicks += 1
            falls += int(after < before - drop)
    return {"clicks": clicks, "falls": falls, "share": round(falls / clicks, 4) if clicks else None,
            "drop_threshold": drop}


@dataclass(frozen=True)
class Protocol:
    """How the simulated user boxes and clicks, and how an answer is scored."""

    name: str
    box: Callable[[np.ndarray], VoxelBox]
    click: Callable[[np.ndarray | None, np.ndarray, sitk.Image], Click | None]
    nsd: Callable[[np.ndarray, np.ndarray, tuple[float, float, float]], float]
    dsc_auc: Callable[[list[float]], float | None]
    description: str


PROTOCOLS = {
    "official": Protocol("official", official_box, official_click, official_nsd, official_dsc_auc,
                         "CVPR 2025 interactive 3D challenge (CVPR25_iter_eval.py, get_boxes.py): box from the "
                         "structure's z range and its middle slice's x/y extent + 0-5 voxels; each click at the "
                         "deepest voxel (EDT in voxels, seeded tie-break) of the largest 26-connected component of "
                         "one error mask, positive on a missed voxel, negative on an extra one; NSD (2 mm, surfel "
                         "areas) set to 0 where Dice <= 0.2; DSC_AUC the trapezoid over the clicks' Dice"),
    "ours": Protocol("ours", tight_box, next_click, nsd, mean_auc,
                     "this project's earlier protocol: tight 3D box; each click at the deepest point (mm) of the "
                     "largest 6-connected component of the missed or of the extra voxels (searched separately); "
                     "NSD (2 mm, boundary voxels) always; DSC_AUC the mean Dice over the clicks"),
}

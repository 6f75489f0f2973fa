"""Where an accepted structure lay and what HU it had, and the seeds a later scan's proposal grows from.

Why: the head trained on earlier scans' feature rows lights every organ that looks like the
structure (both kidneys for one), and a proposal that kept its largest component picked the
neighbour or the other side (kidney proposals with Dice 0.0, docs/interactive.md). Two facts of
an accepted structure carry over to the next scan without any model: where it lay in the body
(its parts' centres as fractions of the body's bounding box, in physical LPS, so scans stored in
other orientations agree; measured within ~0.05 across the phantoms) and its HU band. A proposal
seed is the deepest voxel, near where each part lay, of what the head lights within that band; it
then acts as a click the user did not have to give (the region step grows it), and no seed means
no proposal is shown (nothing confident enough where the structure should be).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from coralbay.interactive.region import MAX_SD_HU

BODY_HU = -500.0           # the body: the largest connected region above this (air outside, lungs inside its box)
PART_FRACTION = 0.05       # parts of a structure below this fraction of its volume are not positions
MAX_PARTS = 8
BAND_SDS = 2.5             # a seed's HU lies within this many robust SDs of the structure's median
MIN_SD_HU = 8.0
SEARCH_MM = 40.0           # a seed lies at most this far from where a part lay
DISTANCE_COST = 0.3        # depth (mm) given up per mm away from where the part lay
MIN_SEED_DEPTH_MM = 3.0    # a seed this close to its candidate region's border is not confident
SEED_LOGIT = -2.0          # the head's logit above which a voxel may be a seed


@dataclass(frozen=True)
class Prior:
    """One accepted structure's position (centres of its parts, body-box fractions) and HU band."""

    centres: np.ndarray    # (K, 3) fractions of the body box along L, P, S
    band: tuple[float, float]   # (median, robust SD) of the smoothed HU inside
    parts: int             # how many parts the structure had (1: a single organ)
    span: tuple[float, float] = (-np.inf, np.inf)   # 2nd-98th percentile of its smoothed HU, border included


@dataclass(frozen=True)
class Seed:
    voxel: tuple[int, int, int]   # input grid (z, y, x)
    depth_mm: float               # its depth in its candidate region


def _lps(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Physical LPS points of input voxels (N, 3) given as (z, y, x)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    xyz = np.asarray(zyx, np.float64)[:, ::-1] * np.asarray(image.GetSpacing())
    return xyz @ direction.T + np.asarray(image.GetOrigin())


def growable(prior: Prior) -> bool:
    """Whether one click's band can hold the structure (its interior HU spread within the region
    step's band cap): seeded proposals only for those; a vertebra's cortical shell and marrow
    (robust SD 60-100 HU on the phantoms, organs 10-14) would be grown as marrow alone."""
    return prior.band[1] <= MAX_SD_HU


def body_box(smooth_zyx: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) LPS corners of the body's bounding box (the largest region above BODY_HU)."""
    step = 2                                          # half resolution is plenty for a box
    body = smooth_zyx[::step, ::step, ::step] > BODY_HU
    labels, count = ndimage.label(body)
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        body = labels == int(np.argmax(sizes)) + 1
    if body.any():
        where = np.argwhere(body) * step
        lo, hi = where.min(0), where.max(0)
    else:                                             # no body (an all-air test volume): the whole grid
        lo, hi = np.zeros(3, int), np.asarray(smooth_zyx.shape) - 1
    corners = np.asarray([[z, y, x] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
    points = _lps(image, corners)
    return points.min(0), np.maximum(points.max(0), points.min(0) + 1.0)


def prior_of(mask_zyx: np.ndarray, smooth_zyx: np.ndarray, image: sitk.Image,
             box: tuple[np.ndarray, np.ndarray]) -> Prior | None:
    """The prior of an accepted mask on its scan (None when empty)."""
    if not mask_zyx.any():
        return None
    labels, count = ndimage.label(mask_zyx)
    sizes = np.bincount(labels.ravel())[1:]
    order = [int(k) + 1 for k in np.argsort(sizes)[::-1] if sizes[k] >= PART_FRACTION * sizes.sum()][:MAX_PARTS]
    centres = np.asarray(ndimage.center_of_mass(mask_zyx, labels, order))
    lo, hi = box
    fractions = (_lps(image, centres) - lo) / (hi - lo)
    core = ndimage.binary_erosion(mask_zyx)
    values = smooth_zyx[core if core.sum() >= 20 else mask_zyx]
    median = float(np.median(values))
    sd = max(MIN_SD_HU, 1.4826 * float(np.median(np.abs(values - median))))
    span = np.percentile(smooth_zyx[mask_zyx], SPAN_PERCENTILES)
    return Prior(fractions, (median, sd), len(order), (float(span[0]), float(span[1])))


def expected_voxels(prior: Prior, image: sitk.Image, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Where the prior's parts should lie on this scan: continuous input indices (K, 3) as (z, y, x)."""
    lo, hi = box
    points = lo + prior.centres * (hi - lo)
    return np.asarray([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in points])[:, ::-1]


def find_seeds(priors: list[Prior], head_zyx: np.ndarray, smooth_zyx: np.ndarray, image: sitk.Image,
               box: tuple[np.ndarray, np.ndarray], forbidden: np.ndarray | None) -> list[Seed]:
    """One seed per part of the structure (as it lay on the earlier scans), where this scan has one.

    `head_zyx`: the head's logits on the input grid (trained on the earlier scans' examples only).
    A part's seed is the voxel, within SEARCH_MM of where the part lay, that maximises its depth
    in the candidate region (head above SEED_LOGIT, HU in the band, not finished work) minus
    DISTANCE_COST per mm away. One seed per candidate component (the priors of several earlier
    scans name the same parts; the newest come first in `priors`).
    """
    spacing = np.asarray(image.GetSpacing()[::-1], np.float64)
    seeds: list[Seed] = []
    taken = np.zeros(smooth_zyx.shape, bool)     # the candidate components that hold a seed
    for prior in priors:
        median, sd = prior.band
        candidates = (head_zyx > SEED_LOGIT) & (np.abs(smooth_zyx - median) <= BAND_SDS * sd)
        if forbidden is not None:
            candidates &= ~forbidden
        if not candidates.any():
            continue
        depth = ndimage.distance_transform_edt(candidates, sampling=spacing)
        components, _ = ndimage.label(candidates)
        reach = np.ceil(SEARCH_MM / spacing).astype(int)
        for centre in expected_voxels(prior, image, box):
            c = np.round(centre).astype(int)
            lo = np.clip(c - reach, 0, np.asarray(depth.shape))
            hi = np.clip(c + reach + 1, 0, np.asarray(depth.shape))
            if np.any(hi <= lo):
                continue
            window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            grids = np.meshgrid(*[(np.arange(a, b) - x) * s for a, b, x, s in zip(lo, hi, centre, spacing)],
                                indexing="ij")
            distance = np.sqrt(sum(g ** 2 for g in grids))
            score = np.where((distance <= SEARCH_MM) & (depth[window] >= MIN_SEED_DEPTH_MM),
                             depth[window] - DISTANCE_COST * distance, -np.inf)
            if not np.isfinite(score).any():
                continue
            local = np.unravel_index(int(np.argmax(score)), score.shape)
            voxel = tuple(int(a + b) for a, b in zip(lo, local))
            if taken[voxel]:
                continue
            taken |= components == components[voxel]
            seeds.append(Seed(voxel, float(depth[voxel])))  # type: ignore[arg-type]
    return seeds


SPAN_PERCENTILES = (2.0, 98.0)


def in_span(smooth_zyx: np.ndarray, prior: Prior) -> np.ndarray:
    """Voxels whose smoothed HU lies in the HU span the accepted structure covered (border included,
    widened by one robust SD).

    Why: the head's coarse answer, kept by the region step within two click half-bands (+-60 HU
    for an organ), carried a third of the right kidney (170 HU) into the liver (113 HU, its span
    60-140); once accepted, the liver kept it from the kidney (stuck at Dice 0.67 for 10 clicks).
    A cut at 4 SDs of the band instead took the lung's border (-820 +- 56 HU; its border reaches
    -580) and left it at 0.85.
    """
    sd = prior.band[1]
    return (smooth_zyx >= prior.span[0] - sd) & (smooth_zyx <= prior.span[1] + sd)


SNAP_MM = 6.0              # a border click is moved at most this far into the structure's band


def snapped(voxel: tuple[int, int, int], prior: Prior, smooth_zyx: np.ndarray,
            spacing_zyx: tuple[float, float, float], forbidden: np.ndarray | None) -> tuple[int, int, int]:
    """The click, or the nearest voxel within SNAP_MM whose HU lies in the structure's band when the
    click's own HU does not.

    Why: the simulated user (and a real one) corrects a proposal at its border, where the scanner's
    blur puts the voxel between the organ and its neighbour (a kidney click at 74 HU, the kidney at
    170); grown from there, the click's own wide band took in two neighbours (Dice 0.94 -> 0.10).
    The structure's band, known from the earlier scans, says which tissue the click means.
    """
    median, sd = prior.band
    if abs(float(smooth_zyx[voxel]) - median) <= BAND_SDS * sd:
        return voxel
    spacing = np.asarray(spacing_zyx, np.float64)
    reach = np.ceil(SNAP_MM / spacing).astype(int)
    lo = np.maximum(np.asarray(voxel) - reach, 0)
    hi = np.minimum(np.asarray(voxel) + reach + 1, smooth_zyx.shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = np.abs(smooth_zyx[window] - median) <= BAND_SDS * sd
    if forbidden is not None:
        inside &= ~forbidden[window]
    where = np.argwhere(inside)
    if where.size == 0:
        return voxel
    distance = np.linalg.norm((where + lo - np.asarray(voxel)) * spacing, axis=1)
    best = int(np.argmin(distance))
    if distance[best] > SNAP_MM:
        return voxel
    return tuple(int(c) for c in where[best] + lo)  # type: ignore[return-value]

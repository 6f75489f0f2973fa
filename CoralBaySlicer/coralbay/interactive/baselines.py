"""Classical baselines of `coralbay eval-interactive`, and the one way they turn prompts into seeds.

Every baseline gets the same kind of prompt as our method and answers its own clicks (the
simulated user looks at the baseline's answer, not ours):
- the box: everything outside it is background (the user's box says "not here");
- each click: a small ball (`BALL_RADIUS_MM`) of foreground or background seed.

A baseline is a function `(hu_zyx, spacing_zyx, prompts) -> mask`, registered by name. The random
walker (scikit-image) is registered here. Slicer's Grow from seeds needs Slicer's own
`vtkImageGrowCutSegment` (slicer-core), which the engine never imports: the benchmark harness
`benchmarks/interactive/eval_with_slicer.py` registers it, then runs `coralbay eval-interactive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from coralbay.interactive.engine import UsageError
from coralbay.interactive.simulate import Click, VoxelBox

BALL_RADIUS_MM = 3.0
# Slicer's AutoComplete effects work in the seeds' bounding box grown on each side by this share
# of its size (at least 3 voxels); Grow from seeds sets 0.2 without an editable-area mask
# (SegmentEditorGrowFromSeedsEffect.computePreviewLabelmap, AbstractScriptedSegmentEditorAutoCompleteEffect.preview).
REGION_GROWTH = 0.20
REGION_MIN_MARGIN = 3
# Without a box a classical method has no background seed; the simulated user then gives it the
# positive clicks' bounding box grown by this much as the box (documented as a limit of --no-box).
NO_BOX_REACH_MM = 50.0
# The random walker's intensities: a soft-tissue window (W 400, L 40), the usual CT reading window
# for the organs and masses we evaluate; on [0, 1] as scikit-image expects.
SOFT_TISSUE_HU = (-160.0, 240.0)
RANDOM_WALKER_BETA = 130.0         # scikit-image's default
RANDOM_WALKER_MAX_VOXELS = 4_000_000   # above this the working region is taken at a coarser stride

FOREGROUND, BACKGROUND = 1, 2


@dataclass
class Prompts:
    """What the user has given so far for one structure."""

    box: VoxelBox | None = None
    clicks: list[Click] = field(default_factory=list)


@dataclass(frozen=True)
class SeedRegion:
    """A baseline's working region (slices of the input grid) and its seeds there (0 = unknown)."""

    region: tuple[slice, slice, slice]
    seeds: np.ndarray


def _ball(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    radius = np.floor(BALL_RADIUS_MM / np.asarray(spacing_zyx)).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum(((g * s) ** 2 for g, s in zip(grid, spacing_zyx))) <= BALL_RADIUS_MM ** 2


def _paint(seeds: np.ndarray, centre: np.ndarray, ball: np.ndarray, value: int) -> None:
    half = np.asarray(ball.shape) // 2
    lo, hi = centre - half, centre + half + 1
    clip_lo, clip_hi = np.maximum(lo, 0), np.minimum(hi, seeds.shape)
    if np.any(clip_hi <= clip_lo):
        return
    target = tuple(slice(int(a), int(b)) for a, b in zip(clip_lo, clip_hi))
    part = ball[tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(clip_lo, clip_hi, lo))]
    seeds[target][part] = value


def seed_region(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float], prompts: Prompts) -> SeedRegion | None:
    """The seeds a Slicer user would paint for these prompts, in the region Slicer would work in.

    The box (widened to hold every positive click's ball: a user moves the box's edge to a
    structure that sticks out of it) is the inside; the working region is that box grown by
    `REGION_GROWTH` of its size (at least 3 voxels) per side, as Slicer's effect grows its seeds'
    extent; every region voxel outside the box is background seed; clicks are balls painted in
    order (a later click wins where balls overlap). None when there is no positive click and no box.
    """
    ball = _ball(spacing_zyx)
    half = np.asarray(ball.shape) // 2
    positives = np.asarray([c.voxel_zyx for c in prompts.clicks if c.positive], int).reshape(-1, 3)
    if prompts.box is not None:
        inner_lo, inner_hi = np.asarray(prompts.box.lower_zyx), np.asarray(prompts.box.upper_zyx)
    elif len(positives):
        reach = np.ceil(NO_BOX_REACH_MM / np.asarray(spacing_zyx)).astype(int)
        inner_lo, inner_hi = positives.min(0) - reach, positives.max(0) + reach
    else:
        return None
    if len(positives):
        inner_lo = np.minimum(inner_lo, positives.min(0) - half)
        inner_hi = np.maximum(inner_hi, positives.max(0) + half)
    inner_lo, inner_hi = np.maximum(inner_lo, 0), np.minimum(inner_hi, np.asarray(shape) - 1)
    margin = np.maximum(REGION_MIN_MARGIN, (REGION_GROWTH * (inner_hi - inner_lo)).astype(int))
    lo, hi = np.maximum(inner_lo - margin, 0), np.minimum(inner_hi + margin + 1, shape)
    seeds = np.full(tuple(int(v) for v in hi - lo), BACKGROUND, np.uint8)
    seeds[tuple(slice(int(a), int(b) + 1) for a, b in zip(inner_lo - lo, inner_hi - lo))] = 0
    for click in prompts.clicks:
        _paint(seeds, np.asarray(click.voxel_zyx) - lo, ball, FOREGROUND if click.positive else BACKGROUND)
    return SeedRegion(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), seeds)  # type: ignore[arg-type]


Baseline = Callable[[np.ndarray, tuple[float, float, float], Prompts], np.ndarray]
_REGISTRY: dict[str, Baseline] = {}
_HOW_TO_GET: dict[str, str] = {}


def register_baseline(name: str, baseline: Baseline) -> None:
    _REGISTRY[name] = baseline


def how_to_get(name: str) -> str:
    """One sentence on how to make baseline `name` available."""
    if name in _HOW_TO_GET:
        return _HOW_TO_GET[name]
    known = ", ".join(sorted(set(_REGISTRY) | set(_HOW_TO_GET)))
    return f"Unknown baseline {name!r}; the baselines are: {known}."


def baseline(name: str) -> Baseline:
    """The registered baseline `name`, or a UsageError that says how to get it."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise UsageError(how_to_get(name))


def available(name: str) -> bool:
    return name in _REGISTRY


def random_walker(hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], prompts: Prompts) -> np.ndarray:
    """scikit-image's random walker (Grady 2006) on the prompts' seeds, set up as its authors
    recommend: intensities on [0, 1] (here a soft-tissue window), `spacing` relative (scikit-image
    divides the intensity gradients by it, so mm would flatten the edges), its default beta, and a
    working region that holds the structure (the box grown by 20 %, never a border through it).
    Large regions are taken at an integer stride (nearest back up) to stay within a few seconds."""
    try:
        from skimage.segmentation import random_walker as walk
    except ImportError:
        raise UsageError("The random-walker baseline needs scikit-image: pip install 'coralbay[eval]'.") from None
    out = np.zeros(hu_zyx.shape, bool)
    seeded = seed_region(hu_zyx.shape, spacing_zyx, prompts)
    if seeded is None or not (seeded.seeds == FOREGROUND).any():
        return out
    stride = int(np.ceil((seeded.seeds.size / RANDOM_WALKER_MAX_VOXELS) ** (1 / 3)))
    step = (slice(None, None, stride),) * 3
    seeds = seeded.seeds[step].astype(np.int32)
    if stride > 1:  # keep every click's voxel as a seed at the coarser stride
        lo = np.asarray([s.start for s in seeded.region])
        for click in prompts.clicks:
            seeds[tuple((np.asarray(click.voxel_zyx) - lo) // stride)] = FOREGROUND if click.positive else BACKGROUND
    if not (seeds == 0).any():
        small = seeds == FOREGROUND
    else:
        lo_hu, hi_hu = SOFT_TISSUE_HU
        data = np.clip((hu_zyx[seeded.region][step] - lo_hu) / (hi_hu - lo_hu), 0.0, 1.0)
        spacing = np.asarray(spacing_zyx) * stride
        small = walk(data, seeds, beta=RANDOM_WALKER_BETA, mode="cg_j", tol=1e-3,
                     spacing=tuple(spacing / spacing.min())) == FOREGROUND
    region_shape = seeded.seeds.shape
    index = np.ix_(*[np.minimum(np.arange(n) // stride, m - 1) for n, m in zip(region_shape, small.shape)])
    out[seeded.region] = small[index]
    return out


register_baseline("random-walker", random_walker)
_HOW_TO_GET["grow-from-seeds"] = (
    "Slicer's Grow from seeds baseline needs slicer-core (pip install 'coralbay[eval]'): run "
    "`python benchmarks/interactive/eval_with_slicer.py` with the same arguments instead of `coralbay eval-interactive`.")
DEFAULT_BASELINES = ("grow-from-seeds", "random-walker")

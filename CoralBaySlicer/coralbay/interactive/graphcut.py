"""The interactive method's core: an exact graph cut (Boykov-Jolly, GrabCut) in a working region.

Why a graph cut: an answer is the minimum of one energy, so it is a function of the scan and the
prompts only (no iteration that stops early, no random draw), and the prompts enter as hard
constraints a solver cannot overrule:

    E(L) = sum_v U_v(L_v) + sum_{u~v} w_uv [L_u != L_v]

- U: minus the log-likelihood of the voxel's intensity under a foreground and a background model,
  each a kernel density of intensities sampled from what the prompts say (click balls, the box's
  outside, the previous answer); the bandwidth is the scan's own noise (`noise_sd`), not a constant
  fitted to a phantom. An optional learned term (the online head, see `session`) adds its own
  log-odds times a weight the data gave it.
- w: contrast-sensitive (GrabCut's beta = 1 / (2 <dI^2>) over the region), divided by the voxel step
  in mm so that a cut costs the same per mm^2 on anisotropic grids.
- Hard: positive click balls foreground; negative click balls, the box's outside and accepted
  structures background.

Local edits: after a click the cut is solved only in a window around it (its size from how far the
click lies from the previous answer's border, narrower for a positive click); outside the window the previous answer stays, and
inside, a positive click can only add to it and a negative one only remove from it (the other label
is fixed). So a click never undoes what the user saw elsewhere, and a click's cost depends on the
window, not on the scan's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import maxflow
import numpy as np
from scipy import ndimage

CLICK_RADIUS_MM = 2.0        # a click is a ball of this radius (at least its own voxel)
RING_VOXELS = 2              # background ring just outside a box
POINT_MARGIN_MM = 30.0       # working region around a click when there is no box and no answer yet
# A click's window: FACTOR x its distance to the previous answer's border + MIN, at most MAX_MM.
# A positive click's window is the narrower: what it adds can run on into a neighbour of the same
# intensity (low-contrast CT at 3 mm: a kidney into the spleen), while what a negative click removes
# is closed off by the answer's own border. Chosen on the development sets together (realct_dev,
# the TotalSegmentator example, phantoms 10000-10002; docs/interactive.md).
POSITIVE_FACTOR, POSITIVE_MIN_MM = 1.0, 5.0
NEGATIVE_FACTOR, NEGATIVE_MIN_MM = 2.0, 10.0
LOCAL_MAX_MM = 80.0
DEPTH_CAP_MM = 35.0          # distances to the border are measured up to this (bounds a click's cost)
GRABCUT_ROUNDS = 3           # fixed rounds of model refit and cut for a box's first answer
SMOOTHING = 2.0              # lambda: pairwise weight (mm); chosen on the development sets, see above
BOX_PRIOR = 2.0              # log-odds at a box's centre of a shape prior (0 on the inscribed ellipsoid)
CLICK_PRIOR = 8.0            # log-odds for the click's label at the click, falling to 0 at CLICK_REACH x its depth
CLICK_REACH = 2.0
# A fresh answer whose region holds more voxels than COARSE_ABOVE_VOXELS (a liver's box on a
# clinical 0.8 mm scan: 6 M) is solved first on a coarser grid of about COARSE_VOXELS, then exactly
# at full resolution in a band one coarse block wide around that answer's border (a banded graph cut,
# Lombaert et al. 2005), so the first answer does not grow with the scan's resolution. Below it (every
# development case: at most 0.38 M) the answer is the single full-resolution cut.
COARSE_ABOVE_VOXELS = 400_000
COARSE_VOXELS = 150_000
REFINE_AGREEMENT = 0.5      # least Dice between a model's mask and its refined border (`refine_border`)
KEEP_PREVIOUS = 0.0          # unary cost of changing a voxel's previous label inside a click's window
HARD = 1e9
DENSITY_FLOOR = 1e-4         # mixed into each density: no intensity is impossible


@dataclass(frozen=True)
class Click:
    voxel: tuple[int, int, int]    # input grid (z, y, x)
    positive: bool


@dataclass
class Prompts:
    """What the user said about one structure, on the input grid (z, y, x)."""

    clicks: list[Click] = field(default_factory=list)
    box: tuple[np.ndarray, np.ndarray] | None = None    # half-open index box (lower, upper), z y x
    positive_voxels: np.ndarray | None = None             # scribbles and segments: (N, 3)
    negative_voxels: np.ndarray | None = None

    def has_positive(self) -> bool:
        return any(c.positive for c in self.clicks) or self.box is not None or (
            self.positive_voxels is not None and len(self.positive_voxels) > 0)


Region = tuple[slice, slice, slice]


def _clip_box(lower: np.ndarray, upper: np.ndarray, shape: tuple[int, ...]) -> Region:
    lower = np.clip(np.asarray(lower, int), 0, np.asarray(shape) - 1)
    upper = np.clip(np.asarray(upper, int), lower + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lower, upper))  # type: ignore[return-value]


def _mm_to_voxels(mm: float, spacing: np.ndarray) -> np.ndarray:
    return np.ceil(mm / spacing).astype(int)


def _positive_points(prompts: Prompts) -> np.ndarray:
    points = [c.voxel for c in prompts.clicks if c.positive]
    if prompts.positive_voxels is not None and len(prompts.positive_voxels):
        points += [tuple(v) for v in prompts.positive_voxels]
    return np.asarray(points, int).reshape(-1, 3)


def full_region(shape: tuple[int, ...], spacing: np.ndarray, prompts: Prompts,
                previous: np.ndarray | None) -> Region:
    """Where a whole answer is solved: the box and its ring, or the positive prompts (and the
    previous answer) grown by POINT_MARGIN_MM."""
    if prompts.box is not None:
        lower, upper = prompts.box
        return _clip_box(np.asarray(lower) - RING_VOXELS, np.asarray(upper) + RING_VOXELS, shape)
    points = _positive_points(prompts)
    if previous is not None and previous.any():
        where = np.argwhere(previous)   # only when there is no click window: see `click_window`
        points = np.vstack([points, where.min(0), where.max(0)])
    margin = _mm_to_voxels(POINT_MARGIN_MM, spacing)
    return _clip_box(points.min(0) - margin, points.max(0) + 1 + margin, shape)


def distance_to_border(mask: np.ndarray, voxel: tuple[int, int, int], spacing: np.ndarray, reach_mm: float) -> float:
    """How far (mm) `voxel` lies from the other label of `mask` (its depth when inside, its distance
    to the mask when outside), measured in a box of `reach_mm` around it (capped there)."""
    reach = _mm_to_voxels(reach_mm, spacing) + 1
    box = tuple(slice(max(0, c - r), c + r + 1) for c, r in zip(voxel, reach))
    local = mask[box] if mask[voxel] else ~mask[box]
    if local.all():
        return float(reach_mm)
    depth = ndimage.distance_transform_edt(local, sampling=spacing)
    return float(min(depth[tuple(c - b.start for c, b in zip(voxel, box))], reach_mm))


def click_window(shape: tuple[int, ...], spacing: np.ndarray, click: Click, distance: float) -> Region:
    """The window a click may change: FACTOR x its distance (mm) to the previous answer's border
    + MIN around it (at most LOCAL_MAX_MM); narrower for a positive click than a negative one."""
    factor, least = (POSITIVE_FACTOR, POSITIVE_MIN_MM) if click.positive else (NEGATIVE_FACTOR, NEGATIVE_MIN_MM)
    half = min(factor * distance + least, LOCAL_MAX_MM)
    reach = _mm_to_voxels(half, spacing)
    centre = np.asarray(click.voxel)
    return _clip_box(centre - reach, centre + reach + 1, shape)


def intersect(a: Region, b: Region) -> Region | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def noise_sd(values: np.ndarray) -> float:
    """The scan's noise in this region (HU): robust SD of neighbour differences along x / sqrt 2."""
    diffs = np.diff(values, axis=-1).ravel()
    if diffs.size == 0:
        return 1.0
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return max(1.4826 * mad / np.sqrt(2.0), 1.0)


class Density:
    """A weighted kernel density of intensities (histogram with a Gaussian kernel), evaluated by bin."""

    def __init__(self, lower: float, upper: float, bandwidth: float) -> None:
        self.lower = lower
        self.width = max(bandwidth / 2.0, 0.5)
        self.bins = int(np.ceil((upper - lower) / self.width)) + 1
        self.sigma_bins = bandwidth / self.width

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        return np.clip(((values - self.lower) / self.width).astype(np.int64), 0, self.bins - 1)

    def log_density(self, samples: np.ndarray, weights: np.ndarray, values_bins: np.ndarray) -> np.ndarray:
        hist = np.bincount(self.bin_of(samples), weights=weights, minlength=self.bins).astype(np.float64)
        hist = ndimage.gaussian_filter1d(hist, self.sigma_bins, mode="constant")
        total = hist.sum()
        hist = hist / total if total > 0 else np.full(self.bins, 1.0 / self.bins)
        hist = (1 - DENSITY_FLOOR) * hist + DENSITY_FLOOR / self.bins
        return np.log(hist)[values_bins]


def _ball(shape: tuple[int, ...], centre: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """Indices of a ball of CLICK_RADIUS_MM around `centre` inside `shape` (always its own voxel)."""
    reach = _mm_to_voxels(CLICK_RADIUS_MM, spacing)
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[np.linalg.norm(offsets * spacing, axis=1) <= max(CLICK_RADIUS_MM, 1e-6)]
    points = centre + offsets
    points = points[np.all((points >= 0) & (points < np.asarray(shape)), axis=1)]
    return tuple(points.T)


def smoothed(hu: np.ndarray, region: Region, spacing: np.ndarray, sigma_mm: float = 1.0) -> np.ndarray:
    """The region's HU smoothed by a Gaussian of `sigma_mm` (computed on the region and a margin only)."""
    pad = _mm_to_voxels(3 * sigma_mm, spacing)
    outer = _clip_box(np.asarray([s.start for s in region]) - pad, np.asarray([s.stop for s in region]) + pad, hu.shape)
    values = ndimage.gaussian_filter(hu[outer].astype(np.float32), sigma_mm / spacing, mode="nearest")
    inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))
    return values[inner]


@dataclass
class Labels:
    """Hard and sampled labels of one working region (local coordinates)."""

    fixed_fg: np.ndarray
    fixed_bg: np.ndarray
    fg_samples: np.ndarray          # weights per voxel: evidence for the foreground model
    bg_samples: np.ndarray


def _labels(shape: tuple[int, ...], region: Region, spacing: np.ndarray, prompts: Prompts,
            forbidden: np.ndarray | None) -> Labels:
    local = tuple(s.stop - s.start for s in region)
    origin = np.asarray([s.start for s in region])
    fixed_fg = np.zeros(local, bool)
    fixed_bg = np.zeros(local, bool)
    for c in prompts.clicks:
        ball = _ball(local, np.asarray(c.voxel) - origin, spacing)
        (fixed_fg if c.positive else fixed_bg)[ball] = True
    for voxels, target in ((prompts.positive_voxels, fixed_fg), (prompts.negative_voxels, fixed_bg)):
        if voxels is not None and len(voxels):
            inside = voxels - origin
            inside = inside[np.all((inside >= 0) & (inside < np.asarray(local)), axis=1)]
            target[tuple(inside.T)] = True
    fixed_fg &= ~fixed_bg          # a negative ball over a positive one: the later user said no
    if prompts.box is not None:    # the box is hard, except where a positive click says otherwise
        fixed_bg |= _outside_box(local, region, prompts.box) & ~fixed_fg
    if forbidden is not None:      # accepted structures are never taken
        fixed_bg |= forbidden[region]
        fixed_fg &= ~fixed_bg
    return Labels(fixed_fg, fixed_bg, fixed_fg.astype(np.float64), fixed_bg.astype(np.float64))


def _pairwise(values: np.ndarray, spacing: np.ndarray, smoothing: float) -> list[np.ndarray]:
    """Contrast-sensitive weights of the edges to the next voxel along each axis."""
    diffs = [np.diff(values, axis=a) for a in range(3)]
    squares = np.concatenate([d.ravel() ** 2 for d in diffs])
    beta = 1.0 / (2.0 * float(squares.mean())) if squares.size and squares.mean() > 0 else 0.0
    weights = []
    for a, d in enumerate(diffs):
        w = np.zeros(values.shape, np.float64)
        index = [slice(None)] * 3
        index[a] = slice(0, -1)
        w[tuple(index)] = smoothing * np.exp(-beta * d.astype(np.float64) ** 2) / spacing[a]
        weights.append(w)
    return weights


def cut(fg_cost: np.ndarray, bg_cost: np.ndarray, pairwise: list[np.ndarray], fixed_fg: np.ndarray,
        fixed_bg: np.ndarray) -> np.ndarray:
    """The exact minimum of the energy (PyMaxflow); True = foreground."""
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(fg_cost.shape)
    for axis, weights in enumerate(pairwise):
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        graph.add_grid_edges(nodes, weights=weights, structure=structure, symmetric=True)
    # source side = foreground: the source capacity is what labelling the voxel background costs
    source = np.where(fixed_fg, HARD, np.where(fixed_bg, 0.0, bg_cost))
    sink = np.where(fixed_bg, HARD, np.where(fixed_fg, 0.0, fg_cost))
    low = np.minimum(source, sink)
    graph.add_grid_tedges(nodes, source - low, sink - low)
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)


def _costs(values: np.ndarray, labels: Labels, bandwidth: float, learned: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Unary costs (-log likelihood) of foreground and background for each voxel of the region."""
    lower, upper = float(values.min()), float(values.max())
    density = Density(lower, upper, bandwidth)
    bins = density.bin_of(values)
    fg_w, bg_w = labels.fg_samples.ravel(), labels.bg_samples.ravel()
    flat = values.ravel()
    fg_cost = -density.log_density(flat[fg_w > 0], fg_w[fg_w > 0], bins.ravel()).reshape(values.shape)
    bg_cost = -density.log_density(flat[bg_w > 0], bg_w[bg_w > 0], bins.ravel()).reshape(values.shape)
    if learned is not None:     # the head's log-odds, already weighted: positive favours foreground
        fg_cost = fg_cost - 0.5 * learned
        bg_cost = bg_cost + 0.5 * learned
    return fg_cost, bg_cost


def box_prior(region: Region, box: tuple[np.ndarray, np.ndarray], strength: float) -> np.ndarray:
    """Log-odds of a shape prior from a box alone: strength x (1 - r^2), r the voxel's radius in
    the box's inscribed ellipsoid (a tight box holds its structure's middle, not its corners)."""
    lower, upper = (np.asarray(b, float) for b in box)
    centre, half = (lower + upper - 1) / 2.0, np.maximum((upper - lower) / 2.0, 0.5)
    axes = [((np.arange(s.start, s.stop) - c) / h) ** 2 for s, c, h in zip(region, centre, half)]
    r2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    return (strength * (1.0 - r2)).astype(np.float32)


def click_prior(region: Region, spacing: np.ndarray, click: Click, depth_mm: float, strength: float) -> np.ndarray:
    """Log-odds (positive favours foreground) that the voxels near a click share its label:
    strength at the click, 0 beyond CLICK_REACH x its depth (the error it corrects is about that wide)."""
    reach = max(CLICK_REACH * depth_mm, float(spacing.max()))
    axes = [((np.arange(s.start, s.stop) - c) * sp) ** 2 for s, c, sp in zip(region, click.voxel, spacing)]
    distance = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    value = strength * np.clip(1.0 - distance / reach, 0.0, None)
    return (value if click.positive else -value).astype(np.float32)


def _balanced(samples: np.ndarray, total: float) -> np.ndarray:
    s = float(samples.sum())
    return samples * (total / s) if s > 0 else samples


def _connected_to(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The components of `mask` touching `seeds` (26-connectivity)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask
    keep = np.unique(labelled[seeds & mask])
    keep = keep[keep > 0]
    return np.isin(labelled, keep)


def solve(hu: np.ndarray, spacing_zyx, prompts: Prompts, previous: np.ndarray | None = None,
          forbidden: np.ndarray | None = None, learned=None, smoothing: float = SMOOTHING,
          keep_previous: float = KEEP_PREVIOUS, box_strength: float = BOX_PRIOR,
          click_strength: float = CLICK_PRIOR, last: Click | None = None) -> np.ndarray:
    """The answer for `prompts` given the previous answer (bool mask on the input grid, z y x).

    `last`, the click just given: with a previous answer it is answered as a local edit (module
    docstring); otherwise the whole region (box or clicks) is solved, with GRABCUT_ROUNDS rounds for
    a box. `learned(region) -> log-odds or None` is the learned term for a region, already weighted.
    """
    spacing = np.asarray(spacing_zyx, float)
    shape = hu.shape
    if not prompts.has_positive() and (previous is None or not previous.any()):
        return np.zeros(shape, bool) if previous is None else previous.copy()
    local_edit = last is not None and previous is not None and previous.any()
    if local_edit and prompts.box is not None and not _in_box(last.voxel, prompts.box):
        # A click outside the box (the official box holds the middle slice's extent only): a
        # positive one says the structure reaches beyond it, a negative one corrects what such a
        # click added, so this click's window ignores the box.
        prompts = replace(prompts, box=None)
    depth = 0.0
    if local_edit:
        depth = distance_to_border(previous, last.voxel, spacing, DEPTH_CAP_MM)
        region = click_window(shape, spacing, last, depth)
        if prompts.box is not None:
            region = intersect(region, full_region(shape, spacing, prompts, None)) or region
    else:
        region = full_region(shape, spacing, prompts, None)
        if _voxels(region) > COARSE_ABOVE_VOXELS and learned is None:
            return _coarse_then_band(hu, spacing, prompts, forbidden, region, smoothing, box_strength)
    values = smoothed(hu, region, spacing)
    labels = _labels(shape, region, spacing, prompts, forbidden)
    bandwidth = max(noise_sd(hu[region].astype(np.float32)), 2.0)
    pairwise = _pairwise(values, spacing, smoothing)
    term = learned(region) if learned is not None else None
    if prompts.box is not None and box_strength:
        prior = box_prior(region, prompts.box, box_strength)
        term = prior if term is None else term + prior
    if local_edit and click_strength:
        prior = click_prior(region, spacing, last, depth, click_strength)
        term = prior if term is None else term + prior
    if local_edit:
        out = previous.copy()
        out[region] = _edit(values, labels, pairwise, bandwidth, term, previous[region],
                            _faces(region, shape), prompts, region, shape, spacing, last, keep_previous)
        return out
    out = np.zeros(shape, bool)
    out[region] = _whole(values, labels, pairwise, bandwidth, term, prompts.box is not None,
                         _faces(region, None))
    return out


def refine_border(hu: np.ndarray, spacing_zyx, mask: np.ndarray, band_mm: float,
                  forbidden: np.ndarray | None = None, smoothing: float = SMOOTHING) -> np.ndarray:
    """A model's mask with its border moved to the scan's own edges, by at most `band_mm`.

    Why: a segmentation model's mask comes from its coarser grid (4 mm for the demo bundle), so its
    border is known to within about one model voxel and every click on it would only mend that
    staircase. The same energy as every answer is minimised in a band of `band_mm` either side of
    the border: voxels deeper inside stay foreground, voxels farther out background; the densities
    come from the mask (foreground) and a ring of 2 x `band_mm` outside it (background). The
    components that touch the mask are kept. An answer that agrees with the mask less than
    REFINE_AGREEMENT (Dice) replaced the structure rather than moved its border (a mask straddling
    an aorta and a vertebra went onto the vertebra): the mask stays as the model gave it. Chosen on
    the development data (docs/interactive.md).
    """
    spacing = np.asarray(spacing_zyx, float)
    if not mask.any():
        return mask.copy()
    where = np.argwhere(mask)
    reach = _mm_to_voxels(2.0 * band_mm, spacing) + 1
    region = _clip_box(where.min(0) - reach, where.max(0) + 1 + reach, mask.shape)
    inside = mask[region]
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing)
    fixed_fg = depth > band_mm
    fixed_bg = distance > band_mm
    if forbidden is not None:
        fixed_bg |= forbidden[region]
        fixed_fg &= ~fixed_bg
    ring = ~inside & (distance <= 2.0 * band_mm)
    values = smoothed(hu, region, spacing)
    bandwidth = max(noise_sd(hu[region].astype(np.float32)), 2.0)
    samples = Labels(fixed_fg, fixed_bg, inside * 1.0, ring * 1.0)
    answer = _band_cut(values, inside & ~fixed_bg, ~fixed_fg & ~fixed_bg, samples, None, bandwidth,
                       _pairwise(values, spacing, smoothing))
    out = np.zeros(mask.shape, bool)
    out[region] = _connected_to(answer, inside)
    if 2 * np.count_nonzero(out & mask) < REFINE_AGREEMENT * (np.count_nonzero(out) + np.count_nonzero(mask)):
        # not a border moved but another structure found (a mask straddling two): keep the model's
        return mask & ~forbidden if forbidden is not None else mask.copy()
    return out


def _voxels(region: Region) -> int:
    return int(np.prod([s.stop - s.start for s in region]))


def _coarse_factors(sizes: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Integer block sizes per axis that bring `sizes` to at most COARSE_VOXELS, the coarse grid as
    near isotropic as the spacing allows."""
    step = float(spacing.min())
    while True:
        factors = np.maximum(1, np.floor(step / spacing + 1e-9)).astype(int)
        if np.prod(-(-sizes // factors)) <= COARSE_VOXELS:
            return factors
        step *= 1.1


def _block_reduce(array: np.ndarray, factors: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.mean, np.any) over blocks of `factors`; the far edges padded by repetition."""
    padded = np.pad(array, [(0, (-n) % f) for n, f in zip(array.shape, factors)], mode="edge")
    shape = [v for n, f in zip(padded.shape, factors) for v in (n // f, f)]
    return reduce(padded.reshape(shape), axis=(1, 3, 5))


def _coarse_then_band(hu: np.ndarray, spacing: np.ndarray, prompts: Prompts, forbidden: np.ndarray | None,
                      region: Region, smoothing: float, box_strength: float) -> np.ndarray:
    """A fresh answer in a large region: the same energy solved on block means of the region
    (COARSE_VOXELS), then the exact cut at full resolution in a band one coarse block wide around
    its border, every voxel outside the band keeping the coarse label."""
    sizes = np.asarray([s.stop - s.start for s in region])
    origin = np.asarray([s.start for s in region])
    factors = _coarse_factors(sizes, spacing)
    down = lambda voxel: (np.asarray(voxel) - origin) // factors  # noqa: E731
    coarse_prompts = Prompts(
        clicks=[Click(tuple(int(v) for v in down(c.voxel)), c.positive) for c in prompts.clicks],  # type: ignore[misc]
        box=None if prompts.box is None else (down(prompts.box[0]), -(-(np.asarray(prompts.box[1]) - origin) // factors)),
        positive_voxels=None if prompts.positive_voxels is None else np.unique(down(prompts.positive_voxels), axis=0),
        negative_voxels=None if prompts.negative_voxels is None else np.unique(down(prompts.negative_voxels), axis=0))
    coarse_forbidden = None if forbidden is None else _block_reduce(forbidden[region], factors, np.any)
    coarse = solve(_block_reduce(hu[region].astype(np.float32), factors, np.mean), spacing * factors,
                   coarse_prompts, None, coarse_forbidden, smoothing=smoothing, box_strength=box_strength)
    up = coarse.repeat(factors[0], 0).repeat(factors[1], 1).repeat(factors[2], 2)[:sizes[0], :sizes[1], :sizes[2]]
    reach = tuple(int(f) + 1 for f in factors)   # one coarse block wide, centred on the coarse border
    band = ndimage.maximum_filter(up, size=reach) & ~ndimage.minimum_filter(up, size=reach)
    out = np.zeros(hu.shape, bool)
    if not band.any():
        out[region] = up
        return out
    values = smoothed(hu, region, spacing)
    labels = _labels(hu.shape, region, spacing, prompts, forbidden)
    term = box_prior(region, prompts.box, box_strength) if prompts.box is not None and box_strength else None
    # the scan's own noise, as a full cut takes it (every other row and slice: a robust SD needs no more)
    bandwidth = max(noise_sd(hu[region][::2, ::2].astype(np.float32)), 2.0)
    samples = Labels(labels.fixed_fg, labels.fixed_bg, (up & ~labels.fixed_bg) * 1.0, (~up) * 1.0)
    answer = _band_cut(values, up, band, samples, term, bandwidth, _pairwise(values, spacing, smoothing))
    out[region] = (_connected_to(answer, labels.fixed_fg) if labels.fixed_fg.any() else answer)
    return out


def _band_cut(values: np.ndarray, up: np.ndarray, band: np.ndarray, labels: Labels, term: np.ndarray | None,
              bandwidth: float, pairwise: list[np.ndarray]) -> np.ndarray:
    """The energy's exact minimum over the `band` voxels, every other voxel fixed to `up`'s label:
    the same unaries (`_costs`, densities from `labels`' samples) and pairwise weights
    (`_pairwise`) as a full cut, an edge to a fixed neighbour added to the band voxel's terminal
    capacity, so the graph holds the band's voxels only."""
    count = int(band.sum())
    ids = np.full(values.shape, -1, np.int64)
    ids[band] = np.arange(count)
    fg_cost, bg_cost = _costs(values, labels, bandwidth, term)
    source = np.where(labels.fixed_fg, HARD, np.where(labels.fixed_bg, 0.0, bg_cost))[band]
    sink = np.where(labels.fixed_bg, HARD, np.where(labels.fixed_fg, 0.0, fg_cost))[band]
    graph = maxflow.Graph[float]()
    graph.add_nodes(count)
    for axis, weights in enumerate(pairwise):   # weights[v]: the edge from v to its next voxel on `axis`
        lower = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        weight = weights[lower]
        in_low, in_high = band[lower], band[upper]
        both = in_low & in_high
        graph.add_edges(ids[lower][both], ids[upper][both], weight[both], weight[both])
        for mine, other, node_ids in ((in_low & ~in_high, upper, ids[lower]), (in_high & ~in_low, lower, ids[upper])):
            fixed_fg = up[other][mine]      # the neighbour's fixed label: a cut to it costs the weight
            where, cost = node_ids[mine], weight[mine]
            source += np.bincount(where[fixed_fg], cost[fixed_fg], minlength=count)
            sink += np.bincount(where[~fixed_fg], cost[~fixed_fg], minlength=count)
    low = np.minimum(source, sink)
    nodes = np.arange(count)
    graph.add_grid_tedges(nodes, source - low, sink - low)
    graph.maxflow()
    answer = up.copy()
    answer[band] = ~graph.get_grid_segments(nodes)
    return answer


def _faces(region: Region, shape: tuple[int, ...] | None) -> np.ndarray:
    """The region's outer faces (local mask); with `shape`, only those not on the volume's edge."""
    faces = np.zeros(tuple(s.stop - s.start for s in region), bool)
    for axis, s in enumerate(region):
        index = [slice(None)] * 3
        if shape is None or s.start > 0:
            index[axis] = 0
            faces[tuple(index)] = True
        if shape is None or s.stop < shape[axis]:
            index[axis] = -1
            faces[tuple(index)] = True
    return faces


def _edit(values: np.ndarray, labels: Labels, pairwise: list[np.ndarray], bandwidth: float,
          term: np.ndarray | None, before: np.ndarray, faces: np.ndarray, prompts: Prompts, region: Region,
          shape: tuple[int, ...], spacing: np.ndarray, last: Click, keep_previous: float) -> np.ndarray:
    """A click's local edit of the previous answer `before` in its window (module docstring)."""
    fixed_fg = labels.fixed_fg | (faces & before) | (before & last.positive)
    fixed_bg = (labels.fixed_bg | (faces & ~before) | (~before & (not last.positive))) & ~fixed_fg
    # each model: half from the clicks' balls (what the user just pointed at), half from the
    # previous answer's side of the window
    ring = labels.fixed_bg & _box_outside(labels, prompts, region, shape)
    fg = _balanced(labels.fixed_fg * 1.0, 1.0) + _balanced(before * 1.0, 1.0)
    bg = _balanced((labels.fixed_bg & ~ring) * 1.0, 1.0) + _balanced((~before & ~ring) * 1.0, 1.0) \
        + _balanced(ring * 1.0, 0.5)
    fg_cost, bg_cost = _costs(values, Labels(fixed_fg, fixed_bg, fg, bg), bandwidth, term)
    fg_cost = fg_cost + keep_previous * (~before)
    bg_cost = bg_cost + keep_previous * before
    answer = cut(fg_cost, bg_cost, pairwise, fixed_fg, fixed_bg)
    seeds = np.zeros(values.shape, bool)
    seeds[_ball(values.shape, np.asarray(last.voxel) - [s.start for s in region], spacing)] = True
    if last.positive:          # what it added, where connected to the click
        return before | _connected_to(answer & ~before, seeds)
    return before & ~_connected_to(before & ~answer, seeds)   # what it removed, where connected


def _whole(values: np.ndarray, labels: Labels, pairwise: list[np.ndarray], bandwidth: float,
           term: np.ndarray | None, boxed: bool, faces: np.ndarray) -> np.ndarray:
    """A fresh answer in its region: a box's GrabCut rounds, or clicks alone (the region's faces
    standing for the surroundings); the component holding the positive prompts."""
    fg = labels.fixed_fg * 4.0 + ((~labels.fixed_bg) * 1.0 if boxed else 0.0)
    bg = labels.fixed_bg.astype(np.float64) + (0.0 if boxed else faces)
    answer = np.zeros(values.shape, bool)
    for _ in range(GRABCUT_ROUNDS if boxed else 1):
        labels.fg_samples, labels.bg_samples = fg, bg
        fg_cost, bg_cost = _costs(values, labels, bandwidth, term)
        answer = cut(fg_cost, bg_cost, pairwise, labels.fixed_fg, labels.fixed_bg)
        fg = labels.fixed_fg * 4.0 + answer
        bg = labels.fixed_bg + (~answer & ~labels.fixed_bg) * 1.0
    if labels.fixed_fg.any():
        return _connected_to(answer, labels.fixed_fg)
    if answer.any():
        labelled, _ = ndimage.label(answer, structure=np.ones((3, 3, 3)))
        return labelled == (1 + int(np.argmax(np.bincount(labelled.ravel())[1:])))
    return answer


def _box_outside(labels: Labels, prompts: Prompts, region: Region, shape: tuple[int, ...]) -> np.ndarray:
    """The region's voxels outside the box (False everywhere without a box)."""
    if prompts.box is None:
        return np.zeros(labels.fixed_bg.shape, bool)
    return _outside_box(labels.fixed_bg.shape, region, prompts.box)


def _outside_box(local: tuple[int, ...], region: Region, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    origin = np.asarray([s.start for s in region])
    lower, upper = (np.asarray(b) - origin for b in box)
    in_box = np.zeros(local, bool)
    in_box[tuple(slice(max(0, int(a)), max(0, int(b))) for a, b in zip(lower, upper))] = True
    return ~in_box


def _in_box(voxel: tuple[int, int, int], box: tuple[np.ndarray, np.ndarray]) -> bool:
    return all(int(a) <= v < int(b) for v, a, b in zip(voxel, *box))

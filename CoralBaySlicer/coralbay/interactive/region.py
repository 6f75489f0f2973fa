"""Intensity-connected growth from the clicks at full resolution, split by geodesic distance.

Why: organs are close to homogeneous in HU (the phantoms by construction, many CT organs nearly),
and the head works on a coarse grid with closeness-to-prompt features, so its answer stops short
of the structure's extent (a click on one lung gave a third of it) and misses thin structures. A
positive click says "this voxel, and what looks like it and is connected to it": the region of a
click is the connected set of voxels whose smoothed HU lies in the click's own intensity band
(median +- 3 robust SDs of a small ball around the click), after an opening that breaks one-voxel
bridges to neighbours of similar HU. Each click's region depends on that click alone, so it is
computed once and cached: a new click adds, it never moves what earlier clicks gave.
A later click in the tissue of an earlier one reuses (and widens) that band; clicks in clearly
different tissues (a vertebra's cancellous body and cortical shell) also grow the HU span between
them. A boundary step adds the partial-volume voxels closer in HU to the structure than to what
lies outside. A negative click inside the grown region (a leak into a neighbour of similar HU)
splits it locally: a voxel stays when its intensity- and neck-weighted geodesic distance (GeoS,
Criminisi 2008; DeepIGeoS, Wang 2019) to the positive seeds is below that to the negative clicks,
paths kept inside the region. The head's coarse answer (`combined`) is kept where it agrees in HU
with the clicks and adds what one band cannot reach. A structure whose first click lies in a
tissue enclosed by a thin brighter shell (a vertebra) is made of shelled pieces instead
(`shell_band`, `shell_pieces`): one piece per vertebra, added when clicked, when the head's answer
mostly covers it (the rest of the column) or when the previous answer held it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric

SEED_RADIUS_MM = 3.0       # ball around a click whose HU define its band
BAND_SDS = 3.0             # half-width of the band in robust SDs
MIN_SD_HU = 8.0            # floor of the band's SD (a ball of identical voxels)
MAX_SD_HU = 30.0           # a click on an edge sees two tissues: its band stays narrow
SMOOTH_MM = 1.0            # Gaussian smoothing of the HU before banding (noise)
GEODESIC_GRADIENT_WEIGHT = 4.0  # cost per mm = 1 + weight * |grad HU| / band SD
GEODESIC_REACH_MM = 50.0   # a negative click changes the answer this far from it at most
GEODESIC_STEP_MM = 1.4     # the split works on a grid at least this coarse (0.7 mm in-plane: every 2nd voxel)
NECK_MM = 6.0              # geodesic cost grows by NECK_MM / depth: paths through narrow necks cost more
EDGE_VOXELS = 2            # the boundary step looks this far outside a click's region
BAND_REUSE = 2.0           # a later click within this many half-bands of an earlier band takes that band
SPAN_APART = 3.0           # clicks whose band centres lie this many half-bands apart span the range between
HEAD_BAND_WIDEN = 2.0      # the head's answer is kept within this many half-bands of a positive click
LEAK_FACTOR = 30.0         # grown regions above this many times the head's answer are a leak
LEAK_MARGIN_MM = 10.0      # ... and are kept only this near the head's answer
EDGE_CONTRAST_HU = 500.0   # the outside HU of the boundary step is taken at most this far from the structure's
SHELL_BRIGHT_FRACTION = 0.6  # a click's region is shelled when this much of its rim is brighter than its band ...
SHELL_THIN_FRACTION = 0.5    # ... and less than this much of the ring SHELL_RING_VOXELS out is (a thin shell)
SHELL_RING_VOXELS = 3
SHELL_HEAD_VOTE = 0.3        # a shelled piece is added when the head's answer covers this much of it ...
SHELL_KEEP = 0.5             # ... or the previous answer covered this much


def smoothed_hu(hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The HU smoothed by SMOOTH_MM (computed once per scan)."""
    return ndimage.gaussian_filter(hu_zyx.astype(np.float32), [SMOOTH_MM / s for s in spacing_zyx])


def _ball_offsets(spacing_zyx: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing_zyx]
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in r], indexing="ij"), -1).reshape(-1, 3)
    return grid[((grid * np.asarray(spacing_zyx)) ** 2).sum(1) <= radius_mm ** 2 + 1e-6]


def click_band(smooth_zyx: np.ndarray, voxel: tuple[int, int, int],
               spacing_zyx: tuple[float, float, float]) -> tuple[float, float]:
    """(centre, half-width) of the HU band of a click, from the ball around it."""
    pts = np.clip(np.asarray(voxel) + _ball_offsets(spacing_zyx, SEED_RADIUS_MM), 0, np.asarray(smooth_zyx.shape) - 1)
    values = smooth_zyx[tuple(pts.T)]
    centre = float(np.median(values))
    sd = float(np.clip(1.4826 * np.median(np.abs(values - centre)), MIN_SD_HU, MAX_SD_HU))
    if abs(float(smooth_zyx[tuple(voxel)]) - centre) > BAND_SDS * sd:   # a thin shell: the ball is mostly other tissue
        centre = float(smooth_zyx[tuple(voxel)])
    return centre, BAND_SDS * sd


def click_region(smooth_zyx: np.ndarray, voxel: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                 forbidden: np.ndarray | None, band: tuple[float, float] | None = None) -> np.ndarray:
    """The voxels connected to the click within its band (bool, input grid); empty if the click is off-band."""
    centre, half = band or click_band(smooth_zyx, voxel, spacing_zyx)
    band = np.abs(smooth_zyx - centre) <= half
    if forbidden is not None:
        band &= ~forbidden
    out = np.zeros(band.shape, bool)
    if not band[voxel]:
        return out
    labels, _ = ndimage.label(band)
    connected = labels == labels[voxel]
    box = bounding_slices(connected, 1)              # all further work inside the click's connected band
    sub = connected[box]
    local_voxel = tuple(int(v) - int(b.start) for v, b in zip(voxel, box))
    core = ndimage.binary_opening(sub)                # break one-voxel bridges to look-alike neighbours
    labels, _ = ndimage.label(core)
    local = labels[tuple(slice(max(0, v - 1), v + 2) for v in local_voxel)]
    keep = np.unique(local[local > 0])
    if keep.size == 0:                                # the click sits in a structure thinner than the opening
        return connected
    out[box] = ndimage.binary_dilation(np.isin(labels, keep)) & sub  # give back what the opening took
    return _with_edge(out, smooth_zyx, centre, forbidden)


def span_region(smooth_zyx: np.ndarray, positives: list[tuple[int, int, int]], span: tuple[float, float],
                forbidden: np.ndarray | None) -> np.ndarray:
    """The voxels in the HU span connected (after an opening) to a positive click."""
    band = (smooth_zyx >= span[0]) & (smooth_zyx <= span[1])
    if forbidden is not None:
        band &= ~forbidden
    core = ndimage.binary_opening(band)
    labels, _ = ndimage.label(core)
    keep = set()
    for v in positives:
        local = labels[tuple(slice(max(0, c - 1), c + 2) for c in v)]
        keep |= set(int(k) for k in np.unique(local[local > 0]))
    if not keep:
        return np.zeros(band.shape, bool)
    return ndimage.binary_dilation(np.isin(labels, list(keep))) & band


def _with_edge(region: np.ndarray, smooth_zyx: np.ndarray, centre: float, forbidden: np.ndarray | None) -> np.ndarray:
    """The region plus the partial-volume voxels at its border that are closer in HU to it than to outside.

    Why: the scanner's blur puts the border voxels between the structure's HU and its neighbours';
    a label is the tissue at the voxel centre, so the border is where the blurred HU crosses the
    midpoint between the structure and what lies just outside (local mean of a shell), the outside
    taken at most EDGE_CONTRAST_HU away (a liver beside fat beside lung would take in the fat).
    """
    box = bounding_slices(region, 3 * EDGE_VOXELS)
    r, hu = region[box], smooth_zyx[box]
    near = ndimage.binary_dilation(r, iterations=EDGE_VOXELS)
    shell = ndimage.binary_dilation(near) & ~near
    weight = ndimage.uniform_filter(shell.astype(np.float32), 2 * EDGE_VOXELS + 1)
    outside = ndimage.uniform_filter(np.where(shell, hu, 0).astype(np.float32), 2 * EDGE_VOXELS + 1) / np.maximum(weight, 1e-6)
    outside = np.clip(outside, centre - EDGE_CONTRAST_HU, centre + EDGE_CONTRAST_HU)
    add = near & ~r & (weight > 0) & (np.abs(hu - centre) < np.abs(hu - outside))
    if forbidden is not None:
        add &= ~forbidden[box]
    labels, _ = ndimage.label(r | add)                # only what touches the region
    keep = np.unique(labels[r])
    out = region.copy()
    out[box] |= np.isin(labels, keep[keep > 0]) & add
    return out


def geodesic_split(region: np.ndarray, smooth_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                   positives: list[tuple[int, int, int]], negatives: list[tuple[int, int, int]],
                   band_sd: float, previous: np.ndarray | None = None) -> np.ndarray:
    """`region` without the part near the negative clicks that is geodesically closer to them than to
    the positive seeds.

    Local: only the box of GEODESIC_REACH_MM around the negative clicks changes (a click edits
    where it is; this also bounds the time on a large organ), worked at >= GEODESIC_STEP_MM.
    Positive seeds: the positive clicks, and the previous answer away from every negative click
    (farther than twice the click's depth in the region, plus a margin) and deeper in the region
    than the click (a leak along a vessel is as thin as the click's depth in it). Why: a negative
    click says "wrong here", not "wrong everywhere"; seeded by one deep click only, a big organ's
    far border was geodesically closer to a negative click in a leak beside it and was cut away.
    """
    inside_neg = [np.asarray(v) for v in negatives if region[v]]
    if not inside_neg:
        return region
    reach = np.ceil(GEODESIC_REACH_MM / np.asarray(spacing_zyx)).astype(int)
    lo = np.maximum(np.min(inside_neg, axis=0) - reach, 0)
    hi = np.minimum(np.max(inside_neg, axis=0) + 1 + reach, region.shape)
    step = np.maximum(1, np.round(GEODESIC_STEP_MM / np.asarray(spacing_zyx))).astype(int)
    box = tuple(slice(int(a), int(b), int(k)) for a, b, k in zip(lo, hi, step))
    spacing = tuple(float(s * k) for s, k in zip(spacing_zyx, step))
    local = region[box]

    def to_local(v: np.ndarray) -> tuple[int, ...]:
        return tuple(int(c) for c in np.minimum((v - lo) // step, np.asarray(local.shape) - 1))

    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(smooth_zyx[box], *spacing)))
    cost = 1.0 + GEODESIC_GRADIENT_WEIGHT * gradient * min(spacing) / max(band_sd, 1.0)
    depth = ndimage.distance_transform_edt(local, sampling=spacing)
    cost = cost + NECK_MM / np.maximum(depth, min(spacing))
    cost[~local] = np.inf
    negative_seeds = [to_local(v) for v in inside_neg]
    negative_seeds = [v for v in negative_seeds if local[v]]
    if not negative_seeds:
        return region
    positive_seeds = [to_local(np.asarray(v)) for v in positives
                      if all(a <= c < b for c, a, b in zip(v, lo, hi)) and region[v]]
    if previous is not None:
        seeds = previous[box] & local
        far = np.ones(seeds.shape, bool)
        for v in negative_seeds:
            far[v] = False
        away = ndimage.distance_transform_edt(far, sampling=spacing)
        click_depth = max(float(depth[v]) for v in negative_seeds)
        seeds &= away > 2.0 * click_depth + 2.0 * max(spacing)
        seeds &= depth > 1.25 * click_depth      # a leak is as thin as the click's depth in it: no seeds there
        seeds &= ~ndimage.binary_erosion(seeds)   # the seeds' border is enough for the distances
        positive_seeds += [tuple(int(c) for c in v) for v in np.argwhere(seeds)]
    if positive_seeds:
        d_pos, _ = MCP_Geometric(cost, sampling=spacing, fully_connected=False).find_costs(positive_seeds)
    else:
        d_pos = np.full(local.shape, np.inf)
    d_neg, _ = MCP_Geometric(cost, sampling=spacing, fully_connected=False).find_costs(negative_seeds)
    lost = local & (d_neg < d_pos)
    full_box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    index = np.ix_(*[np.minimum(np.arange(int(b - a)) // k, n - 1) for a, b, k, n in zip(lo, hi, step, lost.shape)])
    keep = region.copy()
    keep[full_box] &= ~lost[index]
    return keep


def shell_band(smooth_zyx: np.ndarray, click_region_zyx: np.ndarray, band: tuple[float, float]
               ) -> tuple[float, float] | None:
    """(low, shell) HU of a structure whose clicked tissue is enclosed by a thin brighter shell, else None.

    Why: a vertebra is cancellous bone inside a cortical shell, and the blur puts the voxels just
    outside the shell (shell + muscle) in the cancellous band, so neither one band nor the span
    between the two separates the vertebra from its surroundings (measured: the span region took
    2-5k voxels of that outer layer). Test: most of the click region's rim is brighter than its
    band, and little of the ring SHELL_RING_VOXELS out is as bright as the shell (a lung is enclosed
    by brighter tissue too, but not by a thin layer). The shell threshold lies midway between the
    band's centre and the bright rim's median HU, never inside the band.
    """
    box = bounding_slices(click_region_zyx, SHELL_RING_VOXELS + 1)
    if box is None:
        return None
    r, hu = click_region_zyx[box], smooth_zyx[box]
    centre, half = band
    near = ndimage.binary_dilation(r)
    rim = near & ~r
    ring = ndimage.binary_dilation(r, iterations=SHELL_RING_VOXELS)
    ring &= ~ndimage.binary_dilation(r, iterations=SHELL_RING_VOXELS - 1)
    bright_rim = rim & (hu > centre + half)
    if not rim.any() or bright_rim.sum() < SHELL_BRIGHT_FRACTION * rim.sum():
        return None
    shell = max(centre + half, 0.5 * (centre + float(np.median(hu[bright_rim]))))
    if np.count_nonzero(ring & (hu >= shell)) >= SHELL_THIN_FRACTION * max(np.count_nonzero(ring), 1):
        return None
    return centre - half, shell


def shell_pieces(smooth_zyx: np.ndarray, low_shell: tuple[float, float], forbidden: np.ndarray | None
                 ) -> np.ndarray:
    """Labelled pieces of a shelled tissue: the shell (HU >= shell) and the thick part of what lies
    between `low` and the shell (an opening removes the one-voxel partial-volume layer just outside
    the shell); separate vertebrae are separate pieces (a disc lies below `low`)."""
    low, shell = low_shell
    bright = smooth_zyx >= shell
    inner = (smooth_zyx >= low) & ~bright
    if forbidden is not None:
        bright &= ~forbidden
        inner &= ~forbidden
    labels, count = ndimage.label(bright | ndimage.binary_opening(inner))
    return labels.astype(np.uint16) if count < 65536 else labels   # cached per structure: half the memory


def held_pieces(labels: np.ndarray, positives: list[tuple[int, int, int]]) -> np.ndarray:
    """The shelled pieces holding a positive click."""
    held = sorted({int(labels[v]) for v in positives} - {0})
    return np.isin(labels, held) if held else np.zeros(labels.shape, bool)


def voted_pieces(labels: np.ndarray, head_mask: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """The shelled pieces mostly covered by the head's answer (the other vertebrae of the column), or
    by the previous answer. Why the previous answer: the head is refit at every click and its cover
    of a piece moved (0.58 -> 0.17 after a positive click elsewhere: a whole vertebra dropped);
    what the answer held stays unless a negative click cuts it (`geodesic_split`)."""
    n = int(labels.max())
    sizes = np.maximum(np.bincount(labels.ravel(), minlength=n + 1), 1)
    keep = np.bincount(labels[head_mask], minlength=n + 1) >= SHELL_HEAD_VOTE * sizes
    if previous is not None:
        keep |= np.bincount(labels[previous], minlength=n + 1) >= SHELL_KEEP * sizes
    keep[0] = False
    return keep[labels]


def in_bands(values: np.ndarray, spacing_zyx: tuple[float, float, float], positives: list[tuple[int, int, int]],
             widen: float, smooth_zyx: np.ndarray) -> np.ndarray:
    """Which of `values` (smoothed HU, any crop) lie within `widen` half-bands of a positive click's band."""
    out = np.zeros(values.shape, bool)
    for v in positives:
        centre, half = click_band(smooth_zyx, v, spacing_zyx)
        out |= np.abs(values - centre) <= widen * half
    return out


def bounding_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """The box of a mask's voxels grown by `margin` (None when empty)."""
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        out.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(out)


def click_bands(smooth_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                positives: list[tuple[int, int, int]]) -> list[tuple[tuple[float, float], bool]]:
    """Each positive click's band, and whether it is its own (False: an earlier click's, reused).

    A later click in the same tissue as an earlier one takes the earlier band, widened to hold the
    click: a correction click lies near the border, where its own ball mixes the structure with
    its neighbour."""
    out: list[tuple[tuple[float, float], bool]] = []
    for v in positives:
        own = click_band(smooth_zyx, v, spacing_zyx)
        value = float(smooth_zyx[v])
        reused = next(((b[0], max(b[1], 1.1 * abs(value - b[0]))) for b, _ in out
                       if abs(value - b[0]) <= BAND_REUSE * b[1]), None)
        out.append((own, True) if reused is None else (reused, False))
    return out


def grown_answer(smooth_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], cache: dict,
                 positives: list[tuple[int, int, int]], negatives: list[tuple[int, int, int]],
                 forbidden: np.ndarray | None, previous: np.ndarray | None = None,
                 pieces: np.ndarray | None = None, head_mask: np.ndarray | None = None) -> np.ndarray:
    """Union of the positive clicks' regions (cached by click in `cache`), split by the negative clicks.
    `pieces` (a shelled structure, `first_shell`): instead of the HU span between the clicks' bands,
    the pieces holding a positive click and those `head_mask` mostly covers are added, before the
    split (a negative click then cuts a wrong piece, or the wrong part of a piece, like any leak)."""
    out = np.zeros(smooth_zyx.shape, bool)
    bands = [band for band, _ in click_bands(smooth_zyx, spacing_zyx, positives)]
    for v, band in zip(positives, bands):
        key = (v, band)
        if key not in cache:
            cache[key] = click_region(smooth_zyx, v, spacing_zyx, forbidden, band)
        out |= cache[key]
    distinct = sorted(set(bands))
    apart = len(distinct) >= 2 and (distinct[-1][0] - distinct[0][0]) > SPAN_APART * max(h for _, h in distinct)
    if pieces is not None:
        out |= held_pieces(pieces, positives)
        if head_mask is not None:
            out |= voted_pieces(pieces, head_mask, previous)
    elif apart and out.any():
        # Clicks in tissues of different HU (a vertebra's cancellous body and cortical shell): the
        # structure spans the range between them, partial-volume voxels included.
        span = (min(c - h for c, h in distinct), max(c + h for c, h in distinct))
        key = ("span", span, tuple(positives))
        if key not in cache:
            cache[key] = span_region(smooth_zyx, positives, span, forbidden)
        out |= cache[key]
    halves = [b[1] for b in bands]
    if out.any() and negatives:
        out = geodesic_split(out, smooth_zyx, spacing_zyx, positives, negatives, float(np.mean(halves)) / BAND_SDS,
                             previous)
    return out


def first_shell(smooth_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], cache: dict,
                positives: list[tuple[int, int, int]], forbidden: np.ndarray | None) -> np.ndarray | None:
    """The labelled shelled pieces (`shell_pieces`) of the first positive click in a new tissue (its
    own band, `click_bands`) whose region is shelled (`shell_band`), else None; cached per click.
    Why not only the first click: the protocol's first click is the structure's deepest point,
    inside a vertebral body, except where the scan's edge cuts the column (phantom 10003: the
    deepest point lay on an endplate). Clicks that reuse an earlier band are in a tissue already
    tested."""
    for v, (band, own) in zip(positives, click_bands(smooth_zyx, spacing_zyx, positives)):
        if not own:
            continue
        key = ("shell", v, band)
        if key not in cache:
            if (v, band) not in cache:      # the click's region, as `grown_answer` caches it
                cache[(v, band)] = click_region(smooth_zyx, v, spacing_zyx, forbidden, band)
            low_shell = shell_band(smooth_zyx, cache[(v, band)], band)
            cache[key] = None if low_shell is None else shell_pieces(smooth_zyx, low_shell, forbidden)
        if cache[key] is not None:
            return cache[key]
    return None


def combined(head_mask: np.ndarray, grown: np.ndarray, smooth_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
             positives: list[tuple[int, int, int]], negatives: list[tuple[int, int, int]],
             shelled: bool = False) -> np.ndarray:
    """The head's answer, cut to the clicks' widened bands and off the tissue each negative click is
    in (connected to it in its own band, within GEODESIC_REACH_MM), united with the grown regions
    (cut to LEAK_MARGIN_MM around the head's answer when LEAK_FACTOR times larger than it).
    `shelled` (the grown answer holds a shelled structure's pieces, `grown_answer`): the grown
    answer alone, unless it is such a leak.

    Why: the head's coarse answer carried neighbours of another HU into the structure (a liver
    took a third of the kidney beside it, which mutual exclusion then kept from the kidney); the
    grown regions follow the structure at full resolution; the head still adds what clicks in one
    band cannot reach (parts of another HU, or not connected to a click).
    """
    if shelled and np.count_nonzero(grown) <= LEAK_FACTOR * max(np.count_nonzero(head_mask), 1):
        # A shelled structure: the pieces the head's answer covers (in `grown`) replace that
        # answer (its 4 mm border took the partial-volume layer outside the shell and moved with
        # every refit), unless that is a leak by the rule below (then the plain path decides).
        return grown
    box = bounding_slices(head_mask, 0)
    if box is None:
        return grown
    if np.count_nonzero(grown) > LEAK_FACTOR * np.count_nonzero(head_mask):
        # The band joined far more than the head sees of the structure: a leak into neighbours of
        # the same HU (real CT: a kidney's band took 150k voxels of enhanced abdomen, 96x the head's
        # answer; legitimate growth measured at most 15x). Keep the grown part near the head's answer.
        margin = np.ceil(LEAK_MARGIN_MM / np.asarray(spacing_zyx)).astype(int)
        near_box = bounding_slices(head_mask, int(margin.max()))
        near = np.zeros_like(grown)
        near[near_box] = ndimage.distance_transform_edt(~head_mask[near_box], sampling=spacing_zyx) <= LEAK_MARGIN_MM
        grown = grown & near
    part = head_mask[box]
    if positives:
        part = part & in_bands(smooth_zyx[box], spacing_zyx, positives, HEAD_BAND_WIDEN,
                               smooth_zyx)
    for v in negatives:
        if not head_mask[v]:
            continue
        # what the negative click is in: its own tissue, connected to it, near it
        reach = np.ceil(GEODESIC_REACH_MM / np.asarray(spacing_zyx)).astype(int)
        near = tuple(slice(max(int(c) - int(r), b.start), min(int(c) + int(r) + 1, b.stop))
                     for c, r, b in zip(v, reach, box))
        centre, half = click_band(smooth_zyx, v, spacing_zyx)
        tissue = np.abs(smooth_zyx[near] - centre) <= half
        labels, _ = ndimage.label(tissue)
        at = tuple(int(c) - int(n.start) for c, n in zip(v, near))
        if labels[at]:
            local = tuple(slice(n.start - b.start, n.stop - b.start) for n, b in zip(near, box))
            part[local] &= labels != labels[at]
    out = grown.copy()
    out[box] |= part
    return out

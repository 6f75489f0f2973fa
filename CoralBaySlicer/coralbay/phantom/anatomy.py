"""Synthetic abdominal CT phantom in Hounsfield units with an exact label map.

Why: CoralBay's task heads must be trained and tested on machines without network or patient
data, so the project makes its own CT: the anatomy is random per seed but always plausible (body
wall layers, liver, spleen, kidneys, aorta, spine, lung bases, bowel, optional liver lesions), and
the truth is known exactly.

How it works:
- Every structure is a shape in PHYSICAL space (LPS, mm): superquadrics and elliptic cylinders with
  a smooth random sinusoidal deformation, plus a few composite structures (periodic vertebrae and
  ribs, dome-shaped lung bases). Shapes are painted in a fixed order onto a tissue map; later shapes
  overwrite earlier ones only where the tissue beneath is one they may replace (organs stay inside
  the abdominal cavity, a lesion stays inside the liver).
- The tissue of a voxel is the tissue at its CENTRE, so the label map is exact for its grid and
  maps made at different spacings or orientations describe the same anatomy.
- Intensities: a per-seed base HU per tissue (drawn inside the tissue's documented range), a smooth
  texture, white noise, then one separable Gaussian blur that stands for the scanner's point spread
  plus the voxel footprint (partial volume). The blur also correlates the noise, as a CT
  reconstruction kernel does; the noise is scaled so that its final standard deviation is
  `noise_hu`. Labels are never blurred.
- Random choices come from independent streams of one `numpy.random.SeedSequence(seed)`: the
  anatomy does not change with spacing, direction or the lesion option, and the same seed and
  options give identical bytes (on the same platform and numpy version).

Documented Hounsfield units (portal-venous contrast phase), the `TISSUES` table below. Each seed
draws every tissue's base value from "base"; "range" is what the tissue's median respects, and for
labelled structures what the mean over the label (partial volume included) respects. Tissues
marked * are thinner than the blur (a few voxels at most), so their voxels mix with neighbours.

    tissue             label            base HU        range HU
    air                -                -1000          -1024..-950
    bowel_gas        * -                -1000..-950    -1024..-900
    skin             * -                25..50         0..80
    subcutaneous_fat   -                -110..-85      -130..-60
    muscle             -                40..60         20..80
    visceral_fat       -                -105..-80      -130..-60
    bowel              -                20..45         0..70
    liver              1 liver          100..120       80..140
    spleen             2 spleen         110..130       90..150
    kidney_left        3 kidney_left    150..190       120..220
    kidney_right       4 kidney_right   150..190       120..220
    aorta              5 aorta          175..230       140..280
    cancellous_bone    6 vertebrae      180..280       100..400
    cortical_bone    * 6 vertebrae      700..950       500..1300
    lung               7 lung           -870..-800     -920..-700
    liver_lesion       8 liver_lesion   10..70         0..80    (45-85 HU below the liver)
    ivc                -                110..150       80..170
    disc             * -                70..100        50..120
    csf                -                0..15          -10..30
    bile               -                0..20          -10..30
    rib                -                350..550       200..900
    diaphragm        * -                40..60         20..80
    table              -                40..200        -200..400
    (label 6 vertebrae as a whole, cortical and cancellous mixed: mean 150..700)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import write_text_atomic
from coralbay.errors import UsageError
from coralbay.io.labels import (ANATOMICAL_STRUCTURE, MORPHOLOGICALLY_ABNORMAL, Label, LabelTable,
                             Terminology, label_table_path_for)

# --------------------------------------------------------------------------------------------
# Labels and tissues
# --------------------------------------------------------------------------------------------

_LEFT = ("SCT", "7771000", "Left")
_RIGHT = ("SCT", "24028007", "Right")

PHANTOM_LABELS = LabelTable([
    Label(1, "liver", (221, 130, 101),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "10200004", "Liver"))),
    Label(2, "spleen", (157, 108, 162),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "78961009", "Spleen"))),
    Label(3, "kidney_left", (185, 102, 83),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), _LEFT)),
    Label(4, "kidney_right", (212, 126, 151),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), _RIGHT)),
    Label(5, "aorta", (224, 97, 76),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "15825003", "Aorta"))),
    Label(6, "vertebrae", (241, 214, 145),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "51282000", "Vertebra"))),
    Label(7, "lung", (197, 165, 145),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "39607008", "Lung"))),
    Label(8, "liver_lesion", (255, 237, 0),
          Terminology(MORPHOLOGICALLY_ABNORMAL, ("SCT", "52988006", "Lesion"))),
])
LESION_LABEL = 8


@dataclass(frozen=True)
class Tissue:
    """One tissue class of the phantom: its label value (0 = unlabelled) and HU ranges."""

    name: str
    label: int
    base_hu: tuple[float, float]   # each seed draws the tissue's base value from this range
    range_hu: tuple[float, float]  # documented range of the tissue's median (a label's mean)
    texture_hu: float              # amplitude of the smooth within-tissue variation
    thin: bool = False             # thinner than the blur: partial volume dominates its voxels


TISSUES: tuple[Tissue, ...] = (
    Tissue("air", 0, (-1000, -1000), (-1024, -950), 0),
    Tissue("bowel_gas", 0, (-1000, -950), (-1024, -900), 5, thin=True),
    Tissue("skin", 0, (25, 50), (0, 80), 3, thin=True),
    Tissue("subcutaneous_fat", 0, (-110, -85), (-130, -60), 5),
    Tissue("muscle", 0, (40, 60), (20, 80), 5),
    Tissue("visceral_fat", 0, (-105, -80), (-130, -60), 6),
    Tissue("bowel", 0, (20, 45), (0, 70), 8),
    Tissue("liver", 1, (100, 120), (80, 140), 6),
    Tissue("spleen", 2, (110, 130), (90, 150), 5),
    Tissue("kidney_left", 3, (150, 190), (120, 220), 8),
    Tissue("kidney_right", 4, (150, 190), (120, 220), 8),
    Tissue("aorta", 5, (175, 230), (140, 280), 5),
    Tissue("cancellous_bone", 6, (180, 280), (100, 400), 25),
    Tissue("cortical_bone", 6, (700, 950), (500, 1300), 40, thin=True),
    Tissue("lung", 7, (-870, -800), (-920, -700), 15),
    Tissue("liver_lesion", 8, (10, 70), (0, 80), 4),
    Tissue("ivc", 0, (110, 150), (80, 170), 5),
    Tissue("disc", 0, (70, 100), (50, 120), 5, thin=True),
    Tissue("csf", 0, (0, 15), (-10, 30), 3),
    Tissue("bile", 0, (0, 20), (-10, 30), 3),
    Tissue("rib", 0, (350, 550), (200, 900), 30),
    Tissue("diaphragm", 0, (40, 60), (20, 80), 5, thin=True),
    Tissue("table", 0, (40, 200), (-200, 400), 10),
)
TISSUE_ID = {t.name: i for i, t in enumerate(TISSUES)}  # tissue name -> value in the tissue map


def _ids(*names: str) -> list[int]:
    return [TISSUE_ID[n] for n in names]

# The documented range of each label's mean HU (partial volume at its border included).
LABEL_HU_RANGES: dict[int, tuple[float, float]] = {
    t.label: t.range_hu for t in TISSUES if t.label and t.name != "cortical_bone"}
LABEL_HU_RANGES[6] = (150.0, 700.0)  # vertebrae mix cancellous and cortical bone



def hu_table_rows() -> list[str]:
    """The HU table as Markdown rows (the README shows exactly these; a test keeps them in step)."""
    names = {lab.value: lab.name for lab in PHANTOM_LABELS}
    rows = ["| tissue | label | base HU (drawn per seed) | range HU |", "|---|---|---|---|"]
    for t in TISSUES:
        base = (f"{t.base_hu[0]:g}" if t.base_hu[0] == t.base_hu[1]
                else f"{t.base_hu[0]:g}..{t.base_hu[1]:g}")
        label = f"{t.label} {names[t.label]}" if t.label else "-"
        rows.append(f"| {t.name}{' *' if t.thin else ''} | {label} | {base} | "
                    f"{t.range_hu[0]:g}..{t.range_hu[1]:g} |")
    lo, hi = LABEL_HU_RANGES[6]
    rows.append(f"| vertebrae label as a whole | 6 vertebrae | mixed | {lo:g}..{hi:g} |")
    return rows


LESION_HYPODENSITY_HU = (45.0, 85.0)  # how much darker than the liver a lesion is
DEFAULT_SIZE_MM = (300.0, 250.0, 200.0)  # field of view along patient L-R, A-P, S-I
DEFAULT_NOISE_HU = 15.0
PSF_SIGMA_MM = 0.8  # scanner point spread (Gaussian sigma) before the voxel footprint
MAX_VOXELS = 64_000_000
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Phantom:
    """A generated phantom: CT in HU, its exact label map and what is in it."""

    image: sitk.Image                 # int16 HU
    labels: sitk.Image                # uint8, same grid
    label_table: LabelTable
    has_lesion: bool
    lesion_centers_lps: list[tuple[float, float, float]] = field(default_factory=list)
    tissues: sitk.Image | None = None  # uint8 tissue ids (index into TISSUES), same grid
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Canvases: where shapes are evaluated (a voxel grid, or a handful of points)
# --------------------------------------------------------------------------------------------

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


class _GridCanvas:
    """The tissue map of a voxel grid; local coordinates are built only inside a shape's box.

    Coordinates are sums of 1D arrays broadcast against each other, so an axis-aligned shape on
    an axis-aligned grid never materialises full 3D coordinate arrays (the main speed trick).
    """

    def __init__(self, size: Sequence[int], origin: np.ndarray, matrix: np.ndarray) -> None:
        self.size = tuple(int(n) for n in size)          # ITK order (i, j, k)
        self.origin = origin                              # LPS of voxel (0, 0, 0)
        self.matrix = matrix                              # D @ diag(spacing): index -> LPS offset
        self.inverse = np.linalg.inv(matrix)
        self.tissue = np.zeros(self.size[::-1], dtype=np.uint8)  # array order (k, j, i)
        corner = matrix @ (np.asarray(self.size, dtype=float) - 1)
        self.center = origin + corner / 2                  # bounding sphere of the grid
        self.radius = float(np.linalg.norm(matrix @ np.asarray(self.size, dtype=float))) / 2

    def local(self, center: np.ndarray, rot: np.ndarray, half: np.ndarray,
              box_shift: Sequence[float] = (0.0, 0.0, 0.0)):
        """Local coordinates (in the frame `center`, `rot`) of the voxels in the box of half size
        `half` around local point `box_shift`, and the array region they fill; None if the box
        misses the grid."""
        # Clip the box to the grid's bounding sphere first, so that long (even infinite)
        # cylinders in a tilted frame do not spread over the whole grid.
        g = rot.T @ (self.center - center)
        lo_l = np.maximum(np.asarray(box_shift, dtype=float) - half, g - self.radius)
        hi_l = np.minimum(np.asarray(box_shift, dtype=float) + half, g + self.radius)
        if np.any(hi_l < lo_l):
            return None
        ci = self.inverse @ (center + rot @ ((lo_l + hi_l) / 2) - self.origin)
        h = np.abs(self.inverse @ rot) @ ((hi_l - lo_l) / 2)
        lo = np.maximum(np.ceil(ci - h - 1e-6), 0).astype(int)
        hi = np.minimum(np.floor(ci + h + 1e-6) + 1, self.size).astype(int)
        if np.any(hi <= lo):
            return None
        m = rot.T @ self.matrix
        b = rot.T @ (self.origin - center)
        axes = [np.arange(lo[k], hi[k], dtype=np.float64) for k in range(3)]
        shapes = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]
        coords = []
        for j in range(3):
            terms = [(m[j, k] * axes[k]).astype(np.float32).reshape(shapes[k])
                     for k in range(3) if m[j, k] != 0.0]
            u = terms[0] + np.float32(b[j]) if terms else np.full((1, 1, 1), b[j], np.float32)
            for t in terms[1:]:
                u = u + t
            coords.append(u)
        region = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        return region, tuple(coords)


class _PointCanvas:
    """The tissue at a set of LPS points (to place lesions without depending on the grid)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        self.tissue = np.zeros(len(self.points), dtype=np.uint8)

    def local(self, center: np.ndarray, rot: np.ndarray, half: np.ndarray,
              box_shift: Sequence[float] = (0.0, 0.0, 0.0)):
        u = ((self.points - center) @ rot).astype(np.float32)
        return slice(None), (u[:, 0], u[:, 1], u[:, 2])


def _paint(canvas, region, mask: np.ndarray, tissue: int, only: Sequence[int] | None = None) -> int:
    """Set `tissue` where `mask` holds (and the current tissue is one of `only`); voxels painted."""
    current = canvas.tissue[region]
    if only is not None:
        allowed = np.zeros(256, dtype=bool)
        allowed[list(only)] = True
        mask = mask & allowed[current]
    mask = np.broadcast_to(mask, current.shape)
    np.copyto(current, np.uint8(tissue), where=mask)
    return int(np.count_nonzero(mask))


# --------------------------------------------------------------------------------------------
# Shapes in physical space
# --------------------------------------------------------------------------------------------

@dataclass
class _Frame:
    """A local frame (centre, rotation whose columns are the local axes in LPS) with a smooth
    deformation: local axis j is displaced by amp * sin(omega * u_m + phase) for each term."""

    center: np.ndarray
    rot: np.ndarray
    deform: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    def deformed(self, u: Coords) -> list[np.ndarray]:
        v = list(u)
        for j, m, amp, omega, phase in self.deform:
            v[j] = v[j] + np.float32(amp) * np.sin(np.float32(omega) * u[m] + np.float32(phase))
        return v

    def margin(self) -> np.ndarray:
        out = np.zeros(3)
        for j, _m, amp, _o, _p in self.deform:
            out[j] += abs(amp)
        return out


def _superquadric(v: Sequence[np.ndarray], semi: Sequence[float], n: float = 2.0,
                  offset: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Sum over axes of |(v_j - offset_j) / semi_j|^n (axes with infinite semi-axis are skipped)."""
    total = None
    for j in range(3):
        if not math.isfinite(semi[j]):
            continue
        t = v[j] - np.float32(offset[j]) if offset[j] else v[j]
        term = _power(t * np.float32(1.0 / semi[j]), n)
        total = term if total is None else total + term
    return total


def _power(t: np.ndarray, n: float) -> np.ndarray:
    """|t|^n, with fast paths for the exponents the phantom uses."""
    if n == 2.0:
        return t * t
    a = np.abs(t)
    if n == 2.5:
        return a * a * np.sqrt(a)
    if n == 3.0:
        return a * a * a
    return a ** np.float32(n)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_axis(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = math.radians(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


def _random_deform(rng: np.random.Generator, semi: Sequence[float], rel: float
                   ) -> list[tuple[int, int, float, float, float]]:
    """Smooth bending: each finite local axis is displaced by a sinusoid of another axis, with an
    amplitude of up to `rel` of its semi-axis and a wavelength of 2-4 times the driving semi-axis
    (small amplitude times frequency keeps the shape a deformed blob, never a fold). One term
    per axis keeps the cost low: sines of 3D arrays dominate the generation time."""
    out = []
    for j in (0, 1, 2):
        m = (j + 1 + int(rng.integers(0, 2))) % 3
        span = semi[m] if math.isfinite(semi[m]) else 120.0
        amp = rel * semi[j] * rng.uniform(-1.0, 1.0) if math.isfinite(semi[j]) else 0.0
        omega = 2 * math.pi / (span * rng.uniform(2.0, 4.0))
        phase = rng.uniform(0, 2 * math.pi)
        if amp:
            out.append((j, m, float(amp), float(omega), float(phase)))
    return out


Step = Callable[[object], int]


def _blob(frame: _Frame, semi: Sequence[float], tissue: int, only: Sequence[int] | None = None,
          n: float = 2.0) -> Step:
    """A deformed superquadric (ellipsoid when n = 2) of one tissue."""
    half = np.asarray([s if math.isfinite(s) else 1e4 for s in semi]) + frame.margin()

    def step(canvas) -> int:
        got = canvas.local(frame.center, frame.rot, half)
        if got is None:
            return 0
        region, u = got
        return _paint(canvas, region, _superquadric(frame.deformed(u), semi, n) <= 1.0, tissue, only)
    return step


# --------------------------------------------------------------------------------------------
# The anatomy of one seed
# --------------------------------------------------------------------------------------------

@dataclass
class _Anatomy:
    steps: list[Step]
    liver_frame: _Frame
    liver_semi: np.ndarray
    fov_center: np.ndarray
    scale: float


def _sample_anatomy(rng: np.random.Generator, size_mm: np.ndarray) -> _Anatomy:
    """Draw one plausible abdomen that fills a field of view of `size_mm` (L-R, A-P, S-I).

    Positions are written for a reference body 280 mm wide and 210 mm deep (half 140 x 105) and
    scaled to this body; sizes scale with the mean body scale `s`, so small fields of view hold
    small bodies rather than cut-off organs.
    """
    U = rng.uniform
    fov_center = np.array([U(-15, 15), U(-25, 25), U(-400, 100)])
    W = size_mm[0] / 2 * U(0.78, 0.92)
    A = min(size_mm[1] / 2 * U(0.72, 0.90), W * U(0.68, 0.88))
    sx, sy = W / 140.0, A / 105.0
    s = (sx + sy) / 2
    zs = min(s, size_mm[2] / 200.0 * 1.15)  # head-foot positions follow the field of view height
    body_c = fov_center + np.array([U(-1, 1) * (size_mm[0] / 2 - W) * 0.5,
                                    U(-1, 1) * (size_mm[1] / 2 - A) * 0.5, 0.0])
    I3 = np.eye(3)

    def at(x: float, y: float, z: float) -> np.ndarray:
        """A point given in reference-body millimetres relative to the body centre."""
        return body_c + np.array([x * sx, y * sy, z * zs])

    steps: list[Step] = []

    # Patient table under the back (curved slab), if the field of view reaches it.
    table_y = A + U(2, 10)
    table_t = U(6, 10)
    table_r = U(500, 900)
    table_frame = _Frame(body_c.copy(), I3)
    sag = 230.0 ** 2 / (2 * table_r)  # how far the curved table rises at its edges

    def table(canvas) -> int:
        got = canvas.local(table_frame.center, I3, np.array([230.0, (sag + table_t) / 2 + 1, 1e4]),
                           (0.0, table_y + (table_t - sag) / 2, 0.0))
        if got is None:
            return 0
        region, (u, v, _w) = got
        top = np.float32(table_y) - u * u * np.float32(1 / (2 * table_r))
        mask = (v >= top) & (v <= top + np.float32(table_t)) & (np.abs(u) <= 230)
        return _paint(canvas, region, mask, TISSUE_ID["table"])
    steps.append(table)

    # Body wall: skin, subcutaneous fat, muscle, ribs, then the cavity of visceral fat.
    n_body = float(rng.choice([2.0, 2.5, 3.0], p=[0.3, 0.5, 0.2]))
    body_frame = _Frame(body_c.copy(), I3, [
        (0, 1, W * 0.04 * U(-1, 1), 2 * math.pi / (A * U(2, 4)), U(0, 2 * math.pi)),
        (0, 2, W * 0.03 * U(-1, 1), 2 * math.pi / U(250, 500), U(0, 2 * math.pi)),
        (1, 0, A * 0.04 * U(-1, 1), 2 * math.pi / (W * U(2, 4)), U(0, 2 * math.pi))])
    skin = 2.0
    fat_lat, fat_ant, fat_post = U(8, 35) * s, U(10, 40) * s, U(5, 15) * s
    wall = U(7, 13) * s
    fat_semi = (W - skin - fat_lat, A - skin - (fat_ant + fat_post) / 2, math.inf)
    fat_off = (0.0, (fat_ant - fat_post) / 2, 0.0)
    cav_semi = (fat_semi[0] - wall, fat_semi[1] - wall, math.inf)
    rib_period, rib_phase = U(24, 32) * s, U(0, 1)
    rib_slope, rib_start = U(0.25, 0.5), U(-10, 40) * zs
    rib_frac = min(0.5, 10 * s / rib_period)
    cw, ca, cav_y = cav_semi[0], cav_semi[1], fat_off[1]

    def cav(xf: float, yf: float, z: float) -> np.ndarray:
        """A point given as fractions of the abdominal cavity's half-width and half-depth, and
        reference millimetres head-foot, relative to the cavity centre."""
        return body_c + np.array([xf * cw, cav_y + yf * ca, z * zs])

    def body(canvas) -> int:
        got = canvas.local(body_frame.center, I3, np.array([W, A, 1e4]) + body_frame.margin())
        if got is None:
            return 0
        region, u = got
        v = body_frame.deformed(u)
        # The nested layers share |x|^n and |y|^n (powers are the costly part).
        px = _power(v[0], n_body)
        py, py_off = _power(v[1], n_body), _power(v[1] - np.float32(fat_off[1]), n_body)

        def inside(semi: Sequence[float], pyy: np.ndarray) -> np.ndarray:
            return px * np.float32(semi[0] ** -n_body) + pyy * np.float32(semi[1] ** -n_body) <= 1

        n = _paint(canvas, region, inside((W, A), py), TISSUE_ID["skin"])
        _paint(canvas, region, inside((W - skin, A - skin), py), TISSUE_ID["subcutaneous_fat"])
        cavity = inside(cav_semi, py_off)
        wall = inside(fat_semi, py_off) & ~cavity
        _paint(canvas, region, wall, TISSUE_ID["muscle"])
        _paint(canvas, region, cavity, TISSUE_ID["visceral_fat"])
        # Ribs: bands of the wall that rise posteriorly, above the costal margin, not in front.
        # Computed on the wall voxels only (a small part of the box).
        shape = canvas.tissue[region].shape
        vw = [np.broadcast_to(x, shape)[wall] for x in v]
        band = vw[2] - np.float32(rib_slope) * vw[1]
        phase = band * np.float32(1 / rib_period) + np.float32(rib_phase)
        ribs = ((phase - np.floor(phase)) < rib_frac) & (band > rib_start)
        ribs &= ~((vw[1] < -0.55 * A) & (np.abs(vw[0]) < 0.35 * W))
        current = canvas.tissue[region]
        current[wall] = np.where(ribs, np.uint8(TISSUE_ID["rib"]), np.uint8(TISSUE_ID["muscle"]))
        return n
    steps.append(body)

    # Back muscles (erector spinae) and psoas beside the spine.
    post = fat_semi[1] + fat_off[1]  # posterior inner edge of the subcutaneous fat
    for side in (-1, 1):
        semi = (U(20, 27) * s, U(17, 23) * s, math.inf)
        c = body_c + np.array([side * (U(30, 40) * sx), post - semi[1] * U(0.75, 0.95), 0.0])
        steps.append(_blob(_Frame(c, I3, _random_deform(rng, semi, 0.05)), semi, TISSUE_ID["muscle"],
                           only=_ids("visceral_fat", "muscle", "rib")))
    for side in (-1, 1):
        semi = (U(11, 15) * s, U(10, 14) * s, U(110, 150) * zs)
        c = at(side * U(28, 36), U(34, 42), U(-120, -70))
        steps.append(_blob(_Frame(c, _rot_z(U(-10, 10)), _random_deform(rng, semi, 0.06)), semi,
                           TISSUE_ID["muscle"], only=_ids("visceral_fat")))

    # Bowel loops (some with gas) filling the front and lower cavity.
    for _ in range(int(rng.integers(10, 19))):
        semi = (U(14, 32) * s, U(12, 28) * s, U(14, 32) * s)
        c = cav(U(-0.8, 0.8), U(-0.85, 0.4), U(-110, 20))
        frame = _Frame(c, _rot_z(U(0, 180)), _random_deform(rng, semi, 0.08))
        steps.append(_blob(frame, semi, TISSUE_ID["bowel"], only=_ids("visceral_fat")))
        gas = rng.random() < 0.4
        gas_semi = tuple(g * U(0.3, 0.6) for g in semi)
        if gas:
            steps.append(_blob(frame, gas_semi, TISSUE_ID["bowel_gas"], only=_ids("bowel")))

    # Spine: periodic vertebral bodies and discs, canal, arch and processes, with lordosis.
    sp_semi = (U(19, 25) * s, U(15, 19) * s, math.inf)
    sp_c = body_c + np.array([U(-4, 4) * sx, U(36, 44) * sy, 0.0])
    lordosis = (1, 2, U(3, 8) * s * rng.choice([-1, 1]), 2 * math.pi / U(300, 500), U(0, 2 * math.pi))
    scoliosis = (0, 2, U(-2, 2) * s, 2 * math.pi / U(300, 500), U(0, 2 * math.pi))
    sp_frame = _Frame(sp_c, I3, [lordosis, scoliosis])
    period = U(30, 36) * s
    disc_frac = U(0.18, 0.26)
    sp_phase = U(0, 1)
    cortex = 1.8
    canal_y, canal_semi = sp_semi[1] + U(8, 11) * s, (U(8, 10) * s, U(7, 9) * s)
    arch_semi = (canal_semi[0] + U(5, 7) * s, canal_semi[1] + U(5, 7) * s)
    spinous = (U(3.5, 5.5) * s, U(11, 15) * s)
    transverse = (U(12, 16) * s, U(4, 6) * s)
    spinous_y = canal_y + arch_semi[1] + spinous[1] * 0.6
    transverse_x = arch_semi[0] + transverse[0] * 0.5

    def spine(canvas) -> int:
        half = np.array([45 * s, sp_semi[1] + canal_y + 40 * s, 1e4]) + sp_frame.margin()
        got = canvas.local(sp_frame.center, I3, half)
        if got is None:
            return 0
        region, u = got
        v = sp_frame.deformed(u)
        ph = v[2] * np.float32(1 / period) + np.float32(sp_phase)
        frac = ph - np.floor(ph)                          # 0..1 along one vertebra + disc
        in_body = frac >= disc_frac
        endplate = in_body & ((frac - disc_frac < cortex / period) | (1 - frac < cortex / period))
        col = _superquadric(v, sp_semi, 2.5)
        core = _superquadric(v, (sp_semi[0] - cortex, sp_semi[1] - cortex, math.inf), 2.5)
        n = _paint(canvas, region, (col <= 1) & ~in_body, TISSUE_ID["disc"])
        _paint(canvas, region, (col <= 1) & in_body, TISSUE_ID["cortical_bone"])
        _paint(canvas, region, (core <= 1) & in_body & ~endplate, TISSUE_ID["cancellous_bone"])
        # Posterior elements: only in the upper part of each vertebral level.
        level = in_body & (frac < disc_frac + 0.75 * (1 - disc_frac))
        arch = _superquadric(v, (*arch_semi, math.inf), 2.0, (0, canal_y, 0)) <= 1
        arch &= v[1] > np.float32(sp_semi[1] * 0.6)
        spin = _superquadric(v, (*spinous, math.inf), 2.0, (0, spinous_y, 0)) <= 1
        mirrored = [np.abs(v[0]), v[1], v[2]]  # both transverse processes at once
        trans = _superquadric(mirrored, (*transverse, math.inf), 2.0,
                              (transverse_x, canal_y - 2 * s, 0)) <= 1
        _paint(canvas, region, (arch | spin | trans) & level, TISSUE_ID["cortical_bone"])
        # Their marrow: the same shapes shrunk by the cortex thickness.
        inner = [(a - cortex) for a in arch_semi]
        arch_in = _superquadric(v, (*inner, math.inf), 2.0, (0, canal_y, 0)) <= 1
        arch_in &= _superquadric(v, (canal_semi[0] + cortex, canal_semi[1] + cortex, math.inf),
                                 2.0, (0, canal_y, 0)) > 1
        arch_in &= v[1] > np.float32(sp_semi[1] * 0.6 + cortex)
        spin_in = _superquadric(v, (spinous[0] - cortex, spinous[1] - cortex, math.inf), 2.0,
                                (0, spinous_y, 0)) <= 1
        trans_in = _superquadric(mirrored, (transverse[0] - cortex, transverse[1] - cortex, math.inf),
                                 2.0, (transverse_x, canal_y - 2 * s, 0)) <= 1
        level_in = level & (frac - disc_frac > cortex / period) & (
            frac < disc_frac + 0.75 * (1 - disc_frac) - cortex / period)
        marrow = (arch_in | spin_in | trans_in) & level_in
        _paint(canvas, region, marrow, TISSUE_ID["cancellous_bone"])
        canal = _superquadric(v, (*canal_semi, math.inf), 2.0, (0, canal_y, 0)) <= 1
        _paint(canvas, region, canal, TISSUE_ID["csf"])
        return n
    steps.append(spine)

    spine_front = sp_c[1] - sp_semi[1]

    soft = _ids("visceral_fat", "bowel", "bowel_gas")  # what solid organs may displace

    # Kidneys: tilted beans with renal sinus fat at the hilum, the right one lower.
    kid_z = U(-15, 5)
    for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
        semi = (U(24, 30) * s, U(20, 26) * s, U(50, 60) * s)
        z = kid_z + (0.0 if side > 0 else -U(10, 25))
        c = at(side * U(60, 75), U(40, 55), z)
        rot = _rot_z(side * U(20, 40)) @ _rot_y(-side * U(5, 15))
        frame = _Frame(c, rot, _random_deform(rng, semi, 0.05))
        steps.append(_blob(frame, semi, TISSUE_ID[name], only=soft))
        sinus_semi = (U(9, 12) * s, U(7, 10) * s, semi[2] * U(0.4, 0.55))
        sinus_c = c + rot @ np.array([-side * semi[0] * 0.65, -semi[1] * 0.2, 0.0])
        steps.append(_blob(_Frame(sinus_c, rot), sinus_semi, TISSUE_ID["visceral_fat"],
                           only=_ids(name)))

    # Aorta (contrast-filled, left of the midline in front of the spine) and the IVC.
    r_ao = U(9.5, 13) * s
    ao_c = np.array([sp_c[0] + U(4, 14) * sx, spine_front - r_ao - U(1, 4), body_c[2]])
    ao_frame = _Frame(ao_c, I3, [lordosis, (0, 2, U(-4, 4) * s, 2 * math.pi / U(250, 450),
                                            U(0, 2 * math.pi))])
    steps.append(_blob(ao_frame, (r_ao, r_ao, math.inf), TISSUE_ID["aorta"]))
    ivc_semi = (U(10, 14) * s, U(7, 10) * s, math.inf)
    ivc_c = np.array([sp_c[0] - U(18, 28) * sx, spine_front - ivc_semi[1] - U(4, 10), body_c[2]])
    ivc_frame = _Frame(ivc_c, I3, [lordosis])

    # Liver: right lobe plus a left lobe reaching across the midline in front.
    liver_semi = np.array([U(0.55, 0.68) * cw, U(0.78, 0.95) * ca, U(70, 90) * s])
    liver_c = cav(-U(0.33, 0.45), U(-0.12, 0.05), U(-5, 15))
    liver_frame = _Frame(liver_c, _rot_z(U(-15, 15)), _random_deform(rng, liver_semi, 0.06))
    steps.append(_blob(liver_frame, liver_semi, TISSUE_ID["liver"], only=soft))
    ll_semi = (U(0.3, 0.42) * cw, U(0.22, 0.3) * ca, U(25, 38) * s)
    ll_frame = _Frame(cav(U(-0.05, 0.15), -U(0.45, 0.6), U(25, 45)), _rot_z(U(-10, 20)),
                      _random_deform(rng, ll_semi, 0.06))
    steps.append(_blob(ll_frame, ll_semi, TISSUE_ID["liver"], only=soft))

    # Spleen along the left posterolateral wall; size varies (splenomegaly now and then).
    sp_scale = U(0.75, 1.3)
    spl_semi = (U(18, 24) * s * sp_scale, U(42, 55) * s * sp_scale, U(38, 52) * s * sp_scale)
    spl_frame = _Frame(cav(U(0.62, 0.78), U(0.0, 0.3), U(5, 25)), _rot_z(U(30, 55)),
                       _random_deform(rng, spl_semi, 0.07))
    steps.append(_blob(spl_frame, spl_semi, TISSUE_ID["spleen"], only=soft))

    # Gallbladder (hypodense, a look-alike of a lesion) under the liver, most of the time.
    has_gb = rng.random() < 0.7
    gb_semi = (U(12, 18) * s, U(12, 18) * s, U(22, 35) * s)
    gb_c = liver_c + liver_frame.rot @ np.array([liver_semi[0] * U(0.3, 0.5), -liver_semi[1] * 0.6,
                                                 -liver_semi[2] * 0.6])
    if has_gb:
        steps.append(_blob(_Frame(gb_c, _rot_y(U(-20, 20)), _random_deform(rng, gb_semi, 0.05)),
                           gb_semi, TISSUE_ID["bile"], only=[*soft, *_ids("liver")]))
    steps.append(_blob(ivc_frame, ivc_semi, TISSUE_ID["ivc"], only=[*soft, *_ids("liver", "bile")]))

    # Lung bases above dome-shaped diaphragms (right dome higher), inside the ribcage.
    lung_only = [*soft, *_ids("liver", "spleen", "bile", "ivc", "diaphragm")]
    dome_r = U(55, 75)
    for side in (-1, 1):
        apex = dome_r - (0.0 if side < 0 else U(5, 15))
        semi = (U(0.42, 0.5) * cw, U(0.75, 0.9) * ca)
        c = cav(side * U(0.5, 0.6), U(0.0, 0.15), apex)
        depth = U(15, 30) * s
        frame = _Frame(c, I3, [(2, 0, U(-4, 4) * s, 2 * math.pi / U(120, 200), U(0, 2 * math.pi)),
                               (2, 1, U(-4, 4) * s, 2 * math.pi / U(120, 200), U(0, 2 * math.pi))])
        steps.append(_lung_base(frame, semi, depth, lung_only))

    return _Anatomy(steps, liver_frame, liver_semi, fov_center, s)


def _lung_base(frame: _Frame, semi: tuple[float, float], depth: float, only: list[int]) -> Step:
    """Lung above a paraboloid dome: inside the elliptic cylinder q <= 1 and w >= -depth * q,
    so the dome is highest in the middle and the costophrenic recess lowest at the rim; a 4 mm
    diaphragm lies under it."""
    thick = 4.0
    margin = frame.margin()
    half = np.array([semi[0] * 1.1 + margin[0], semi[1] * 1.1 + margin[1], 5e3])
    shift = (0.0, 0.0, 5e3 - (depth * 1.1 + thick + margin[2] + 1.0))  # box starts under the recess

    def step(canvas) -> int:
        got = canvas.local(frame.center, frame.rot, half, shift)
        if got is None:
            return 0
        region, u = got
        v = frame.deformed(u)
        q = _superquadric(v, (semi[0], semi[1], math.inf))
        height = v[2] + np.float32(depth) * q
        diaphragm = (q <= 1.1) & (height >= -thick) & (height < 0)
        _paint(canvas, region, diaphragm, TISSUE_ID["diaphragm"], only)
        return _paint(canvas, region, (q <= 1.0) & (height >= 0), TISSUE_ID["lung"], only)
    return step


def _sample_lesions(rng: np.random.Generator, anatomy: _Anatomy
                    ) -> list[tuple[np.ndarray, np.ndarray, _Frame]]:
    """1-3 hypodense liver lesions whose centre and near surroundings are liver tissue.

    Candidates are checked on the physical anatomy (not on a grid), so a seed's lesions are the
    same at every spacing and orientation.
    """
    count = int(rng.integers(1, 4))
    lesions: list[tuple[np.ndarray, np.ndarray, _Frame]] = []
    for _ in range(count):
        radius = rng.uniform(5.0, 14.0) * max(0.7, min(1.0, anatomy.scale))
        semi = radius * rng.uniform(0.85, 1.15, size=3)
        deform = _random_deform(rng, semi, 0.08)
        dirs = rng.normal(size=(48, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        radii = 0.7 * rng.uniform(0, 1, size=(48, 1)) ** (1 / 3)  # uniform in the inner ball
        local = dirs * radii * anatomy.liver_semi
        centers = anatomy.liver_frame.center + local @ anatomy.liver_frame.rot.T
        probes = [centers] + [centers + sign * semi[k] * 1.1 * np.eye(3)[k]
                              for k in range(3) for sign in (-1, 1)]
        canvas = _PointCanvas(np.concatenate(probes))
        for step in anatomy.steps:
            step(canvas)
        ok = (canvas.tissue.reshape(7, -1) == TISSUE_ID["liver"]).all(axis=0)
        for i in np.flatnonzero(ok):
            c = centers[i]
            if all(np.linalg.norm(c - o[0]) > (radius + o[1].max() + 3) for o in lesions):
                lesions.append((c, semi, _Frame(c, np.eye(3), deform)))
                break
    return lesions


# --------------------------------------------------------------------------------------------
# Grid: spacing, direction, field of view
# --------------------------------------------------------------------------------------------

def _random_spacing(rng: np.random.Generator) -> np.ndarray:
    """Isotropic 1.2-2.0 mm, or a clinical-style thin in-plane / thicker slice protocol."""
    iso = round(float(rng.uniform(1.2, 2.0)), 3)
    inplane = round(float(rng.uniform(0.7, 1.0)), 3)
    slices = np.array([2.0, 2.5, 3.0, 5.0])
    allowed = slices[inplane * inplane * slices >= 1.45]
    thick = float(allowed[int(rng.integers(0, len(allowed)))])
    if rng.random() < 0.4:
        return np.array([iso, iso, iso])
    return np.array([inplane, inplane, thick])


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """Mostly axial (identity or flipped axes, as DICOM and NIfTI writers produce), sometimes a
    permuted (coronal/sagittal) order, sometimes a small oblique tilt."""
    kind = rng.random()
    signs = rng.choice([-1.0, 1.0], size=3)
    perm = rng.permutation(3)
    tilt = rng.random() < 0.2
    axis = rng.normal(size=3)
    angle = rng.uniform(3.0, 12.0)
    p = np.eye(3)
    if kind >= 0.4:
        p = np.diag(signs)
    if kind >= 0.7:
        p = p[:, perm]
    return _rot_axis(axis, angle) @ p if tilt else p


def _parse_direction(direction) -> np.ndarray:
    if isinstance(direction, str):
        code = direction.strip().upper()
        if len(code) != 3 or not all(sum(c in pair for c in code) == 1
                                     for pair in ("LR", "PA", "IS")):
            raise UsageError(f"The direction {direction!r} is not a three-letter orientation such as "
                             "LPS, RAS or LPI.")
        d = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code)
        return np.asarray(d, dtype=float).reshape(3, 3)
    try:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
    except (TypeError, ValueError):
        raise UsageError("The direction must be a 3x3 matrix, nine numbers (row by row, columns are "
                         "the image axes in LPS) or an orientation code such as LPS.") from None
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise UsageError("The direction matrix must be orthonormal (each image axis a unit vector, "
                         "axes perpendicular).")
    return d


def _vec3(value, what: str, lo: float, hi: float) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise UsageError(f"The {what} must be one number or three numbers.") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise UsageError(f"The {what} must be one number or three numbers.")
    if np.any(arr < lo) or np.any(arr > hi):
        got = ", ".join(f"{a:g}" for a in arr)
        raise UsageError(f"The {what} must lie between {lo:g} and {hi:g} (got {got}).")
    return arr


def _grid(direction: np.ndarray, spacing, size_mm, shape, rng_spacing: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing (per image axis), size (voxels per image axis) and field of view (L-R, A-P, S-I)."""
    patient_axis = np.argmax(np.abs(direction), axis=0)  # the patient axis each image axis follows
    if len(set(patient_axis.tolist())) != 3:
        raise UsageError("The direction is too oblique: each image axis must run closest to a "
                         "different patient axis.")
    if shape is not None:
        shape = _vec3(shape, "shape", 8, 4096).round().astype(int)
        if spacing is not None and size_mm is not None:
            raise UsageError("Give at most two of shape, spacing and size_mm; the third follows.")
    sp = _vec3(spacing, "spacing", 0.1, 20.0) if spacing is not None else None
    fov = _vec3(size_mm, "field of view size in mm", 40.0, 1000.0) if size_mm is not None else None
    random_sp = _random_spacing(rng_spacing)
    if shape is not None and sp is not None:
        fov = np.zeros(3)
        fov[patient_axis] = shape * sp
        _vec3(fov, "field of view size in mm (shape times spacing)", 40.0, 1000.0)
    if fov is None:
        fov = np.asarray(DEFAULT_SIZE_MM, dtype=float)
    extent = fov[patient_axis]
    if shape is not None and sp is None:
        sp = extent / shape
    if sp is None:
        sp = random_sp
    size = shape if shape is not None else np.maximum(np.rint(extent / sp), 1).astype(int)
    if np.prod(size.astype(float)) > MAX_VOXELS:
        raise UsageError(f"A phantom of {size[0]} x {size[1]} x {size[2]} voxels is too large "
                         f"(at most {MAX_VOXELS // 1_000_000} million); use a coarser spacing or a "
                         "smaller field of view.")
    return sp, size, fov


# --------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------

def _gauss_kernel(sigma_vox: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(volume: np.ndarray, kernels: Sequence[np.ndarray]) -> np.ndarray:
    """Separable convolution with symmetric kernels and edge replication; kernels in ITK axis
    order (i, j, k). Written with in-place slice arithmetic: no padded copies of the volume."""
    out = volume
    for axis_itk, k in enumerate(kernels):
        axis = 2 - axis_itk
        x = np.moveaxis(out, axis, 0)
        r = len(k) // 2
        acc = x * k[r]
        n = x.shape[0]
        for i in range(1, r + 1):
            w = k[r + i]
            if n > 2 * i:                                     # both neighbours inside
                acc[i:n - i] += (x[:n - 2 * i] + x[2 * i:]) * w
            for j in sorted(set(range(min(i, n))) | set(range(max(n - i, 0), n))):
                acc[j] += (x[max(j - i, 0)] + x[min(j + i, n - 1)]) * w  # edges: replicate
        out = np.moveaxis(acc, 0, axis)
    return np.ascontiguousarray(out)


def _smooth_field(rng: np.random.Generator, size: np.ndarray, spacing: np.ndarray,
                  cell_mm: float = 15.0) -> np.ndarray:
    """A smooth random field (unit-ish amplitude): random values every `cell_mm`, interpolated
    linearly, for gentle within-organ texture."""
    coarse_n = np.maximum(np.ceil(size * spacing / cell_mm).astype(int) + 2, 2)
    field_ = rng.standard_normal(tuple(coarse_n[::-1])).astype(np.float32)
    for axis_itk in range(3):
        axis = 2 - axis_itk
        pos = np.arange(size[axis_itk]) * spacing[axis_itk] / cell_mm + 0.5
        i0 = np.floor(pos).astype(int)
        f = (pos - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        f = f.reshape(shape)
        field_ = np.take(field_, i0, axis=axis) * (1 - f) + np.take(field_, i0 + 1, axis=axis) * f
    return field_


def _render(tissue: np.ndarray, base: np.ndarray, texture: np.ndarray, spacing: np.ndarray,
            noise_hu: float, rng_tex: np.random.Generator, rng_noise: np.random.Generator
            ) -> np.ndarray:
    """HU image of a tissue map: base value + smooth texture + noise, then the blur."""
    size = np.array(tissue.shape[::-1])
    field_ = _smooth_field(rng_tex, size, spacing)
    hu = np.take(base.astype(np.float32), tissue)
    hu += np.take(texture.astype(np.float32), tissue) * field_
    sigma_mm = np.sqrt(PSF_SIGMA_MM ** 2 + spacing ** 2 / 12.0)
    kernels = [_gauss_kernel(sig / sp) for sig, sp in zip(sigma_mm, spacing)]
    if noise_hu > 0:
        gain = float(np.prod([np.sqrt(np.sum(k.astype(np.float64) ** 2)) for k in kernels]))
        noise = rng_noise.standard_normal(tissue.shape, dtype=np.float32)
        hu += noise * np.float32(noise_hu / gain)
    hu = _blur(hu, kernels)
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def generate_phantom(seed: int, *, spacing=None, size_mm=None, direction=None,
                     lesions: bool | None = None, noise_hu: float = DEFAULT_NOISE_HU,
                     shape=None) -> Phantom:
    """Generate the phantom of `seed`.

    spacing: mm per image axis (one number or three); random if None (isotropic 1.2-2 mm or
        0.7-1.0 mm in-plane with 2-5 mm slices).
    size_mm: field of view along the patient's L-R, A-P and S-I axes (default 300 x 250 x 200);
        the body and its organs are scaled to fill it.
    direction: image axes in LPS: a 3x3 matrix, nine numbers (row-major, as ITK), or an
        orientation code such as "LPS", "RAS", "LPI"; random if None (axial with flips, sometimes
        permuted axes, sometimes a small oblique tilt).
    lesions: liver lesions present (True), absent (False) or a coin toss of the seed (None).
    noise_hu: standard deviation of the image noise in HU.
    shape: voxels per image axis; with it give at most one of spacing and size_mm.
    """
    if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
            or not 0 <= int(seed) < 2 ** 63):
        raise UsageError("The seed must be a whole number from 0 to 2^63-1.")
    try:
        noise_hu = float(noise_hu)
    except (TypeError, ValueError):
        raise UsageError("The noise level must be a number of HU.") from None
    if not (math.isfinite(noise_hu) and 0 <= noise_hu <= 300):
        raise UsageError("The noise level must lie between 0 and 300 HU.")
    streams = np.random.SeedSequence(int(seed)).spawn(7)
    rng_anat, rng_sp, rng_dir, rng_les, rng_hu, rng_tex, rng_noise = (
        np.random.default_rng(s) for s in streams)

    random_dir = _random_direction(rng_dir)
    d = _parse_direction(direction) if direction is not None else random_dir
    sp, size, fov = _grid(d, spacing, size_mm, shape, rng_sp)

    anatomy = _sample_anatomy(rng_anat, fov)
    want_lesions = rng_les.random() < 0.5 if lesions is None else bool(lesions)
    lesion_list = _sample_lesions(rng_les, anatomy)

    matrix = d @ np.diag(sp)
    origin = anatomy.fov_center - matrix @ ((size - 1) / 2.0)
    canvas = _GridCanvas(size, origin, matrix)
    for step in anatomy.steps:
        step(canvas)
    centers: list[tuple[float, float, float]] = []
    if want_lesions:
        for c, semi, frame in lesion_list:
            if _blob(frame, semi, TISSUE_ID["liver_lesion"], only=[TISSUE_ID["liver"]])(canvas) > 0:
                centers.append(tuple(round(float(x), 4) for x in c))

    base = np.array([rng_hu.uniform(*t.base_hu) for t in TISSUES])
    lesion = TISSUE_ID["liver_lesion"]
    base[lesion] = np.clip(base[TISSUE_ID["liver"]] - rng_hu.uniform(*LESION_HYPODENSITY_HU),
                           *TISSUES[lesion].base_hu)
    texture = np.array([t.texture_hu for t in TISSUES])
    hu = _render(canvas.tissue, base, texture, sp, noise_hu, rng_tex, rng_noise)

    lut = np.array([t.label for t in TISSUES], dtype=np.uint8)
    label_array = lut[canvas.tissue]

    def to_image(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(x) for x in sp))
        img.SetOrigin(tuple(float(x) for x in origin))
        img.SetDirection(tuple(float(x) for x in d.reshape(-1)))
        return img

    return Phantom(image=to_image(hu), labels=to_image(label_array), label_table=PHANTOM_LABELS,
                   has_lesion=bool(centers), lesion_centers_lps=centers,
                   tissues=to_image(canvas.tissue), seed=int(seed))


def write_phantom(phantom: Phantom, ct_path: str | os.PathLike,
                  labels_path: str | os.PathLike) -> None:
    """Write the CT, the label map and its `<labels>.labels.json` table, each atomically.

    Both paths are checked before anything is written, so a bad path leaves no file behind.
    """
    from coralbay.io.volumes import check_output_path, write_image

    ct = check_output_path(ct_path)
    lab = check_output_path(labels_path)
    if os.path.abspath(ct) == os.path.abspath(lab):
        raise UsageError("The CT and the label map need different file names.")
    write_image(phantom.image, ct)
    write_image(phantom.labels, lab)
    table = json.dumps(phantom.label_table.to_dict(), indent=2) + "\n"
    write_text_atomic(label_table_path_for(lab), table)

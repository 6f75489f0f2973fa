"""Shapes in physical space (LPS mm) and the canvases they are painted on: a voxel grid, or a
handful of probe points (to test a lesion position without a grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


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



"""Slicer's RAS coordinates <-> the engine's LPS coordinates, converted once, at the boundary.

Slicer shows and stores positions in RAS (x grows to the patient's right, y to anterior); ITK, DICOM
and the engine's command line use LPS (x to the left, y to posterior). The two frames differ only in
the sign of x and y, so the conversion is its own inverse. Every point or region the Slicer module
passes to the engine, and every position the engine reports back, goes through here.
"""

from __future__ import annotations

from typing import Sequence

Point = tuple[float, float, float]
Box = tuple[float, float, float, float, float, float]


def ras_to_lps(point: Sequence[float]) -> Point:
    """A point in Slicer's RAS frame as LPS (negate x and y)."""
    x, y, z = (float(v) for v in point)
    return (-x, -y, z)


lps_to_ras = ras_to_lps  # the same sign flip in both directions


def ras_bounds_to_lps_box(bounds: Sequence[float]) -> Box:
    """Slicer bounds [xmin, xmax, ymin, ymax, zmin, zmax] (RAS) as an LPS box (x0, y0, z0, x1, y1, z1).

    The corners are ordered so that x0 <= x1, y0 <= y1, z0 <= z1.
    """
    if len(bounds) != 6:
        raise ValueError("Bounds must have six values: xmin, xmax, ymin, ymax, zmin, zmax.")
    xmin, xmax, ymin, ymax, zmin, zmax = (float(v) for v in bounds)
    if xmin > xmax or ymin > ymax or zmin > zmax:
        raise ValueError("The region is empty (its bounds are inverted).")
    return (-xmax, -ymax, zmin, -xmin, -ymin, zmax)


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two boxes (x0, y0, z0, x1, y1, z1) share a volume of space (touching is not enough)."""
    return all(max(a[i], b[i]) < min(a[i + 3], b[i + 3]) for i in range(3))


def format_coordinates(values: Sequence[float]) -> str:
    """Values as the command line takes them: comma-separated millimetres, 0.1 micrometre precision."""
    def one(v: float) -> str:
        text = f"{float(v):.4f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return ",".join(one(v) for v in values)

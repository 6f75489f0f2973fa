"""Prompts of an interactive session, validated against the scan: points, scribbles, box, segment.

Every position is physical (LPS, mm, as ITK and DICOM). A prompt is checked before it changes
anything: a point outside the volume, a scribble or segment that is empty or on another grid, a
box with no voxel of the scan inside, each gives one sentence (`InputError`) and the session
keeps its state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.interactive.engine import InputError, UsageError, read_label_map, same_grid


@dataclass(frozen=True)
class Point:
    lps: tuple[float, float, float]
    positive: bool
    kind: str = "point"


@dataclass(frozen=True)
class Scribble:
    """Painted strokes on the input grid: voxels (z, y, x) marked positive and negative."""

    positive: np.ndarray = field(compare=False)   # (N, 3) int, z y x
    negative: np.ndarray = field(compare=False)   # (M, 3) int, z y x
    kind: str = "scribble"


@dataclass(frozen=True)
class Box:
    lower: tuple[int, int, int]  # input index box (x, y, z), half-open
    upper: tuple[int, int, int]
    kind: str = "box"


@dataclass(frozen=True)
class Segment:
    """An existing segment to refine: its voxels (z, y, x) on the input grid."""

    voxels: np.ndarray = field(compare=False)
    kind: str = "segment"


Prompt = Point | Scribble | Box | Segment


def _vector(value: Any, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"The {what} must be three numbers (LPS, mm).") from None
    if len(values) != 3 or not all(np.isfinite(values)):
        raise UsageError(f"The {what} must be three finite numbers (LPS, mm).")
    return values  # type: ignore[return-value]


def inside_index(image: sitk.Image, lps: Sequence[float]) -> tuple[int, int, int] | None:
    """The input voxel (x, y, z) holding a physical point, or None when it lies outside the volume."""
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in lps]))
    rounded = np.round(index).astype(int)
    if np.any(rounded < 0) or np.any(rounded >= np.asarray(image.GetSize())):
        return None
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def point(image: sitk.Image, lps: Any, positive: bool) -> Point:
    where = _vector(lps, "point")
    if inside_index(image, where) is None:
        raise InputError(f"The point ({where[0]:.1f}, {where[1]:.1f}, {where[2]:.1f}) mm (LPS) lies outside the volume.")
    return Point(where, bool(positive))


def _on_input_grid(image: sitk.Image, labels: sitk.Image, what: str) -> np.ndarray:
    if not same_grid(image, labels):
        raise InputError(f"The {what} does not lie on the scan's grid (size, spacing, origin and direction must match).")
    return sitk.GetArrayViewFromImage(labels)


def scribble_from_array(image: sitk.Image, array_zyx: np.ndarray, positive_value: int = 1,
                        negative_value: int = 2) -> Scribble:
    if tuple(array_zyx.shape) != tuple(image.GetSize())[::-1]:
        raise InputError("The scribble does not lie on the scan's grid.")
    pos = np.argwhere(array_zyx == positive_value)
    neg = np.argwhere(array_zyx == negative_value)
    if len(pos) == 0 and len(neg) == 0:
        raise InputError(f"The scribble is empty: no voxel holds {positive_value} (positive) or "
                         f"{negative_value} (negative).")
    return Scribble(pos, neg)


def scribble(image: sitk.Image, path: str, positive_value: int = 1, negative_value: int = 2) -> Scribble:
    labels = read_label_map(path)
    return scribble_from_array(image, np.asarray(_on_input_grid(image, labels, "scribble")),
                               positive_value, negative_value)


def box(image: sitk.Image, lower_lps: Any, upper_lps: Any) -> Box:
    a, b = _vector(lower_lps, "box corner"), _vector(upper_lps, "box corner")
    corners = [image.TransformPhysicalPointToContinuousIndex([x, y, z])
               for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])]
    idx = np.asarray(corners)
    size = np.asarray(image.GetSize())
    lower = np.clip(np.ceil(idx.min(0) - 1e-6), 0, size).astype(int)
    upper = np.clip(np.floor(idx.max(0) + 1e-6) + 1, 0, size).astype(int)
    if np.any(upper <= lower):
        raise InputError("The box holds no voxel of the volume.")
    return Box(tuple(int(v) for v in lower), tuple(int(v) for v in upper))  # type: ignore[arg-type]


def segment_from_array(image: sitk.Image, array_zyx: np.ndarray, value: int = 1) -> Segment:
    if tuple(array_zyx.shape) != tuple(image.GetSize())[::-1]:
        raise InputError("The segment does not lie on the scan's grid.")
    voxels = np.argwhere(array_zyx == value)
    if len(voxels) == 0:
        raise InputError(f"The segment to refine is empty (no voxel holds {value}).")
    return Segment(voxels)


def segment(image: sitk.Image, path: str, value: int = 1) -> Segment:
    labels = read_label_map(path)
    return segment_from_array(image, np.asarray(_on_input_grid(image, labels, "segment")), value)


__all__ = ["Point", "Scribble", "Box", "Segment", "Prompt", "point", "scribble", "scribble_from_array",
           "box", "segment", "segment_from_array", "inside_index"]

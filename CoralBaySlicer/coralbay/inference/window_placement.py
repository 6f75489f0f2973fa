"""Where sliding windows go along one axis: MONAI's placement, in one place.

Why its own module: the sliding-window loop and the body crop (`preprocess.window_span`) must
place windows identically, or the crop would change which windows blend into a voxel. It
imports nothing heavy, so `preprocess` can use it without importing torch.
"""

from __future__ import annotations

import math


def window_interval(size: int, window: int, overlap: float) -> int:
    """Step between window starts: the whole window when one window spans the axis, else
    int(window * (1 - overlap)), at least 1 (MONAI's `_get_scan_interval`)."""
    if window >= size:
        return window
    return max(int(window * (1 - overlap)), 1)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start of every window along an axis of `size` voxels: every interval from 0, the last one
    moved back to end flush with the axis (MONAI's `dense_patch_slices`). One window at 0 when
    the window spans the axis."""
    if window >= size:
        return [0]
    interval = window_interval(size, window, overlap)
    count = math.ceil((size - window) / interval) + 1
    return [min(i * interval, size - window) for i in range(count)]

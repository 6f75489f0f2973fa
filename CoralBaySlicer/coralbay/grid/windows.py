"""Where sliding windows go along one axis: MONAI's placement, in one place.

Why its own module: the sliding-window loop and the body crop (`grid.model_grid.window_span`) must
place windows identically, or the crop would change which windows blend into a voxel. It
imports nothing heavy, so the grid can use it without importing torch.
"""

from __future__ import annotations

import math


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start of every window along an axis of `size` voxels: every int(window * (1 - overlap))
    voxels (at least 1) from 0, the last one moved back to end flush with the axis (MONAI's
    `_get_scan_interval` and `dense_patch_slices`). One window at 0 when the window spans the axis."""
    if window >= size:
        return [0]
    interval = max(int(window * (1 - overlap)), 1)
    count = math.ceil((size - window) / interval) + 1
    return [min(i * interval, size - window) for i in range(count)]

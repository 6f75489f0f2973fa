"""Sliding windows: their settings (`WindowSettings`) and where they go along one axis
(MONAI's placement), in one place.

Why its own module: the sliding-window loop and the body crop (`grid.model_grid.window_span`) must
place windows identically, or the crop would change which windows blend into a voxel. It
imports nothing heavy, so the grid can use it without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from coralbay.vocabulary import BlendMode


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding windows go over a volume and how their outputs blend.

    One object for every sliding-window function (segmentation logits, classification
    embeddings, training validation), built from a bundle's inference section
    (`InferenceSettings.windows`) with the command's overrides.
    """

    size: tuple[int, int, int]
    overlap: float = 0.5
    blend: BlendMode = BlendMode.GAUSSIAN
    sigma_scale: float = 0.125  # Gaussian sigma as a fraction of the window size
    batch_size: int = 2         # windows evaluated at once
    skip_empty: bool = True     # windows that hold only air (inputs at the bottom of the HU window) are not run
    empty_below: float = 1e-6   # "only air": every input at or below this

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "blend", BlendMode(self.blend))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap}")

    def with_(self, **changes) -> "WindowSettings":
        """A copy with some fields changed (None values are ignored: 'no override')."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})



def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start of every window along an axis of `size` voxels: every int(window * (1 - overlap))
    voxels (at least 1) from 0, the last one moved back to end flush with the axis (MONAI's
    `_get_scan_interval` and `dense_patch_slices`). One window at 0 when the window spans the axis."""
    if window >= size:
        return [0]
    interval = max(int(window * (1 - overlap)), 1)
    count = math.ceil((size - window) / interval) + 1
    return [min(i * interval, size - window) for i in range(count)]

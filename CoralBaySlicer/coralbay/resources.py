"""Memory planning: estimate what a segmentation run needs before allocating it.

Why: a 500^3 scan with a 14-class head at 1.5 mm can need gigabytes; failing an hour into a batch,
or being killed by the operating system without a word, is the worst outcome. The estimate is
deliberately generous (peak activations of a window are counted several times over); when the
run does not fit, the window batch is lowered first, and only then is the run refused with a
sentence that says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from coralbay.errors import CoralBayError

GIB = 1024 ** 3
# Peak memory of one window's forward, per voxel of the window: CONV_COPIES full-resolution
# tensors of F channels (encoder1/decoder1 with residual branches and norms) plus ATTENTION
# bytes-per-voxel-worth for the first Swin stage's attention matrices (W^3/8 tokens x 343 x
# 3 heads, a few copies). Fitted to the peak RSS measured on the CPU with 64^3 windows: about
# 390 MiB per window at F=6 and 320-330 MiB at F=12 (the formula gives 404 and 488 MiB).
CONV_COPIES = 14
ATTENTION_PER_VOXEL = 320
FOREGROUND_MARGIN = 1.2  # 20 % headroom for allocator fragmentation and Python objects


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a segmentation run needs, by what it is for."""

    weights: int
    volume: int
    stitching: int
    activations: int
    restore: int

    @property
    def host(self) -> int:
        """Main memory when everything runs on the CPU."""
        return int(FOREGROUND_MARGIN * (self.weights + self.volume + self.stitching + self.activations + self.restore))

    @property
    def device(self) -> int:
        """Accelerator memory when the model and the stitching run there (restore stays on the host)."""
        return int(FOREGROUND_MARGIN * (self.weights + self.volume + self.stitching + self.activations))


def estimate_segmentation(grid_shape: Sequence[int], input_box_voxels: int, classes: int,
                          window: Sequence[int], feature_size: int, window_batch: int,
                          parameters: int) -> MemoryEstimate:
    """Estimate from the model grid, the cropped input region and the network's size."""
    grid = int(np.prod(grid_shape))
    window_voxels = int(np.prod(window))
    slab = int(window[0]) * int(np.prod(grid_shape[1:]))
    return MemoryEstimate(
        weights=4 * parameters,
        volume=4 * grid,
        # 16-bit per-class probability store plus float32 accumulators of the open slabs
        stitching=2 * classes * grid + 2 * (4 * classes + 4) * slab,
        activations=window_batch * 4 * window_voxels * (CONV_COPIES * feature_size + ATTENTION_PER_VOXEL),
        # per class: one resampled float32 probability, the running best and the argmax
        restore=(4 + 4 + 2) * input_box_voxels,
    )


def available_host_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def available_device_memory(device) -> int | None:
    """Free accelerator memory in bytes, or None for the CPU (or where it cannot be asked)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def plan_window_batch(estimate_for, window_batch: int, host_free: int, device_free: int | None) -> tuple[int, MemoryEstimate]:
    """The largest window batch <= `window_batch` that fits; refuse when even 1 does not.

    `estimate_for(batch)` gives the MemoryEstimate for a batch size.
    """
    batch = max(1, window_batch)
    while True:
        estimate = estimate_for(batch)
        fits_host = estimate.host <= host_free if device_free is None else (estimate.restore * FOREGROUND_MARGIN <= host_free)
        fits_device = device_free is None or estimate.device <= device_free
        if fits_host and fits_device:
            return batch, estimate
        if batch == 1:
            needed, free, where = ((estimate.device, device_free, "GPU") if not fits_device
                                   else (estimate.host, host_free, "main"))
            raise CoralBayError(
                f"This run needs about {needed / GIB:.1f} GiB of {where} memory but only {free / GIB:.1f} GiB "
                "are free; restrict it with --roi, use a model with a coarser spacing, or free memory.")
        batch = max(1, batch // 2)

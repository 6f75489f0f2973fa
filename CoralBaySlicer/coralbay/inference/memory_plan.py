"""Memory planning: estimate what a segmentation run needs before allocating it.

Why: a 500^3 scan with a 14-class head at 1.5 mm can need gigabytes; failing an hour into a batch,
or being killed by the operating system without a word, is the worst outcome. The estimate is
generous (20 % headroom over measured figures); when the
run does not fit, the window batch is lowered first, and only then is the run refused with a
sentence that says what to change. A window's activations come from a table measured per
architecture (`MEASURED_WINDOW_MIB`), not from a guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from coralbay.errors import CoralBayError

T = TypeVar("T")
GIB = 1024 ** 3
# Peak memory one window's forward adds, MEASURED on the CPU in float32 with
# `python -m coralbay_bench.window_peak` (benchmarks/real/window-*.json; issue 13), in MiB, for
# (feature size, window edge): (the lean forward of `inference.lean_forward`, which runs the
# windows of a batch one after another, so this is its peak whatever the batch; MONAI's forward,
# per window of the batch). U96H was measured with its lightweight decoder (projections
# 48,48,96,192,384,768). Other sizes use a least-squares fit of bytes per window voxel, linear in
# the feature size, through these points.
MEASURED_WINDOW_MIB: dict[tuple[int, int], tuple[float, float]] = {
    (6, 64): (49.0, 392.7),
    (12, 64): (120.0, 392.7),
    (48, 96): (559.8, 1445.3),
    (192, 96): (2085.8, 2847.1),
}
FOREGROUND_MARGIN = 1.2  # 20 % headroom for allocator fragmentation and Python objects


def _fit_per_voxel(column: int) -> tuple[float, float]:
    """(a, b): bytes per window voxel = a + b * feature size, least squares over the table."""
    rows = [(f, mib * 2 ** 20 / w ** 3) for (f, w), values in MEASURED_WINDOW_MIB.items()
            for mib in (values[column],)]
    design = np.array([[1.0, f] for f, _ in rows])
    target = np.array([v for _, v in rows])
    (a, b), *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(a), float(b)


_FITS = (_fit_per_voxel(0), _fit_per_voxel(1))


def window_activation_bytes(feature_size: int, window: Sequence[int], lean: bool = True) -> int:
    """Peak bytes one window's forward adds: measured where the table has the size, else the fit,
    never below what a measured narrower network needs per voxel (so it grows with the width)."""
    edge_cubed = int(np.prod(window))
    column = 0 if lean else 1
    key = (int(feature_size), int(round(edge_cubed ** (1 / 3))))
    if key in MEASURED_WINDOW_MIB and key[1] ** 3 == edge_cubed:
        return int(MEASURED_WINDOW_MIB[key][column] * 2 ** 20)
    a, b = _FITS[column]
    per_voxel = {f: values[column] * 2 ** 20 / w ** 3 for (f, w), values in MEASURED_WINDOW_MIB.items()}
    narrower = [v for f, v in per_voxel.items() if f <= feature_size]
    floor = max(narrower) if narrower else min(per_voxel.values())
    return int(edge_cubed * max(a + b * feature_size, floor))


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
                          parameters: int, lean: bool = True) -> MemoryEstimate:
    """Estimate from the model grid, the cropped input region and the network's size.

    `lean`: the network runs `lean_forward` (one window's activations, whatever the batch, plus
    the batch's inputs and logits); otherwise MONAI's forward (every window of the batch at once).
    """
    grid = int(np.prod(grid_shape))
    window_voxels = int(np.prod(window))
    slab = int(window[0]) * int(np.prod(grid_shape[1:]))
    return MemoryEstimate(
        weights=4 * parameters,
        volume=4 * grid,
        # 16-bit per-class probability store plus float32 accumulators of the open slabs
        stitching=2 * classes * grid + 2 * (4 * classes + 4) * slab,
        activations=(window_activation_bytes(feature_size, window, lean) * (1 if lean else window_batch)
                     + window_batch * 4 * window_voxels * (classes + 1)),
        # per class: one resampled float32 probability, the running best and the argmax
        restore=(4 + 4 + 2) * input_box_voxels,
    )


def available_host_memory() -> int:
    import psutil

    free = int(psutil.virtual_memory().available)
    limit = memory_limit_override()
    return min(free, limit) if limit is not None else free


def available_device_memory(device) -> int | None:
    """Free accelerator memory in bytes, or None for the CPU (or where it cannot be asked)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    limit = memory_limit_override()
    return min(int(free), limit) if limit is not None else int(free)


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


def memory_limit_override() -> int | None:
    """`CORALBAY_MAX_MEMORY_GB` caps what a run may plan to use (shared servers, tests)."""
    value = os.environ.get("CORALBAY_MAX_MEMORY_GB")
    if not value:
        return None
    try:
        return int(float(value) * GIB)
    except ValueError:
        raise CoralBayError(f"CORALBAY_MAX_MEMORY_GB must be a number of GiB, not {value!r}.") from None


@dataclass(frozen=True)
class Attempt:
    """Where one try of the sliding windows runs."""

    device: Any           # torch.device of the network
    stitch_device: Any    # torch.device of the blended output
    window_batch: int

    def describe(self) -> str:
        where = (f"on {self.device.type}" if self.device == self.stitch_device
                 else f"on {self.device.type} with stitching on {self.stitch_device.type}")
        return f"a window batch of {self.window_batch} {where}"


def fallback_attempts(device, window_batch: int) -> list[Attempt]:
    """What to try, in order, when memory runs out: halve the window batch down to 1, then (on
    an accelerator) keep only the network there and stitch on the CPU, then run on the CPU."""
    import torch

    attempts = [Attempt(device, device, window_batch)]
    batch = window_batch
    while batch > 1:
        batch //= 2
        attempts.append(Attempt(device, device, batch))
    if device.type != "cpu":
        cpu = torch.device("cpu")
        attempts += [Attempt(device, cpu, 1), Attempt(cpu, cpu, 1)]
    return attempts


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def run_with_memory_fallback(run: Callable[[Attempt], T], device, window_batch: int,
                             log: Callable[[str], None]) -> tuple[T, Attempt]:
    """Call `run(attempt)` until one attempt fits in memory; say what was done at each step."""
    import gc

    import torch

    attempts = fallback_attempts(device, window_batch)
    for index, attempt in enumerate(attempts):
        try:
            return run(attempt), attempt
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if index + 1 == len(attempts):
                raise CoralBayError(f"Out of memory even with {attempt.describe()}; restrict the run "
                                    "with --roi or free memory.") from None
            log(f"Out of memory with {attempt.describe()}; retrying with {attempts[index + 1].describe()}.")
    raise AssertionError("unreachable")

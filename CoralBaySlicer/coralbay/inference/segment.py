"""Segmentation of a CT volume: preprocess, sliding windows, and labels back on the input grid.

Two steps with one object between them (`PreparedScan`): `prepare_segmentation` (CPU: crop,
resampling, HU window) and `segment_prepared` (network, restore); `segment_image` runs both,
so a cohort's workers can prepare one scan while the network runs another with the same code.

The path is built to stay lean on large scans: the body crop and the skipped air windows cut
the work, the network runs MONAI's Swin blocks through `fast_swin` (same weights and math,
no dense attention masks), each finished slab of the blended output is turned into 16-bit class
probabilities at once (`blend_slabs` -> `ProbabilityStore`), and the restore to the input grid
works chunk by chunk (`restore.restore_to_input`, which explains why probabilities, not labels,
are resampled).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.bundle.loader import LoadedBundle
from coralbay.bundle.manifest import Manifest, PreprocessingSettings
from coralbay.errors import BundleError
from coralbay.grid.boxes import IndexBox
from coralbay.grid.geometry import GridGeometry
from coralbay.grid.windows import WindowSettings
from coralbay.inference.fast_swin import disable_fast_swin, enable_fast_swin
from coralbay.inference.lean_forward import LeanSegmentation
from coralbay.inference.memory_plan import (Attempt, available_device_memory, available_host_memory,
                                estimate_segmentation, plan_window_batch, run_with_memory_fallback)
from coralbay.inference.preprocess import prepare
from coralbay.inference.restore import ProbabilityStore, region_for, restore_labels
from coralbay.inference.sliding_window import blend_slabs
from coralbay.io.labels import LabelTable
from coralbay.vocabulary import RestoreMethod

Progress = Callable[[str, float, str], None]
log = logging.getLogger("coralbay.inference")


def plan_memory(grid_shape: Sequence[int], input_box: IndexBox, bundle: LoadedBundle,
                device: torch.device, window_batch: int, lean: bool = True) -> int:
    """The window batch that fits the free memory (see `memory_plan`); refuse when none does."""
    manifest = bundle.manifest
    parameters = sum(p.numel() for p in bundle.network.parameters())
    fitted, _ = plan_window_batch(
        lambda b: estimate_segmentation(grid_shape, int(np.prod(input_box.size)), manifest.num_outputs,
                                        manifest.inference.window_size, bundle.spec.feature_size, b,
                                        parameters, lean),
        window_batch, available_host_memory(), available_device_memory(device))
    if fitted < window_batch:
        log.warning(f"Lowered the window batch from {window_batch} to {fitted} to fit in the free memory.")
    return fitted


@dataclass
class SegmentationResult:
    labels: sitk.Image                         # UInt8/UInt16 on exactly the input grid
    label_table: LabelTable                    # the labels present in the output's table
    probabilities: dict[str, sitk.Image] | None = None  # per structure, float32 on the input grid
    stats: dict = field(default_factory=dict)


def _noop(stage: str, fraction: float, message: str = "") -> None:
    return None


@dataclass
class PreparedScan:
    """A scan ready for the segmentation network, without the input's voxels.

    Why its own object: preparing (body crop, resampling onto the model grid, HU window) is CPU
    work that needs the input's voxels, the network needs only the model-grid volume, and the
    restore only the input grid's geometry. So `prepare_segmentation` can run on a CPU worker (or
    a thread) while the network runs another scan, and `segment_prepared` can run where the input
    was never read; `segment_image` is the two in a row (what `coralbay segment` and Slicer run).
    """

    volume: np.ndarray | None          # float32 (X, Y, Z) in [0, 1]; None once handed to the network
    grid: sitk.Image                   # the model grid's geometry (UInt8, never read)
    input_box: IndexBox                # the part of the input grid the model grid covers
    input_geometry: GridGeometry       # the input's grid, where the labels go
    windows: WindowSettings            # the sliding windows the model grid was grown for
    preprocessing: PreprocessingSettings  # what it was prepared with (must be the bundle's)
    seconds: float = 0.0               # wall time of the preparation

    def take_volume(self) -> np.ndarray:
        """Hand the model-grid volume over (this object keeps none), so the network's caller can
        free it as soon as the last window has run."""
        if self.volume is None:
            raise ValueError("this prepared scan's volume was already handed to the network")
        volume, self.volume = self.volume, None
        return volume


def prepare_segmentation(image: sitk.Image, manifest: Manifest, *, overlap: float | None = None,
                         roi_lps: Sequence[float] | None = None, skip_empty: bool = True) -> PreparedScan:
    """The CPU part of segmentation: crop to the body (and ROI), resample onto the model grid,
    window the intensities, for a segmentation bundle's `manifest` (no weights needed)."""
    start = time.perf_counter()
    windows = manifest.inference.windows(overlap=overlap).with_(skip_empty=skip_empty)
    prepared = prepare(image, manifest.preprocessing, roi_lps, windows=windows)
    return PreparedScan(prepared.array, prepared.grid, prepared.input_box, GridGeometry.of(image), windows,
                        manifest.preprocessing, time.perf_counter() - start)


def segment_image(image: sitk.Image, bundle: LoadedBundle, device: torch.device, *,
                  overlap: float | None = None, roi_lps: Sequence[float] | None = None,
                  structures: Sequence[str] | None = None, probabilities: bool = False,
                  window_batch_size: int | None = None, skip_empty: bool = True,
                  autocast: bool = True, fast_attention: bool = True, probability_bits: int = 16,
                  restore: RestoreMethod = RestoreMethod.LINEAR, progress: Progress = _noop) -> SegmentationResult:
    """Segment `image` with a segmentation bundle; the label map lies on `image`'s grid.

    `prepare_segmentation` then `segment_prepared` (see those for the options).
    """
    progress("preprocess", 0.0, "cropping and resampling")
    scan = prepare_segmentation(image, bundle.manifest, overlap=overlap, roi_lps=roi_lps, skip_empty=skip_empty)
    progress("preprocess", 1.0, f"model grid {scan.volume.shape}")  # type: ignore[union-attr]
    return segment_prepared(scan, bundle, device, structures=structures, probabilities=probabilities,
                            window_batch_size=window_batch_size, autocast=autocast,
                            fast_attention=fast_attention, probability_bits=probability_bits,
                            restore=restore, progress=progress, input_image=image)


def segment_prepared(scan: PreparedScan, bundle: LoadedBundle, device: torch.device, *,
                     structures: Sequence[str] | None = None, probabilities: bool = False,
                     window_batch_size: int | None = None, autocast: bool = True,
                     fast_attention: bool = True, probability_bits: int = 16,
                     restore: RestoreMethod = RestoreMethod.LINEAR, progress: Progress = _noop,
                     input_image: sitk.Image | None = None) -> SegmentationResult:
    """The network and the restore for a scan `prepare_segmentation` made with this bundle's
    manifest; the label map lies on the input's grid. Takes the scan's volume (`take_volume`).

    `input_image` (the input itself, when at hand) only spares building an empty image of the
    input's grid for the restore; its voxels are not read. `autocast` runs the network in bf16
    (fp16 without bf16 support) on CUDA; `fast_attention` uses `fast_swin`'s attention and
    `lean_forward`'s slab-wise blocks (off only to compare with MONAI's own forward). Class
    probabilities are kept with `probability_bits` (16, or 8 to halve the largest buffer); the
    labels do not depend on whether probability maps are requested.
    """
    manifest = bundle.manifest
    if scan.preprocessing != manifest.preprocessing or scan.windows.size != manifest.inference.window_size:
        raise BundleError(f"The scan was prepared for another model's grid than {manifest.name}'s.")
    windows = scan.windows
    table = manifest.labels
    keep = table.subset(structures) if structures else table
    timings: dict[str, float] = {"preprocess_s": scan.seconds}
    image = input_image if input_image is not None else scan.input_geometry.blank_image()

    start = time.perf_counter()
    progress("inference", 0.0, "sliding windows")
    network = bundle.network.to(device)
    if fast_attention:
        enable_fast_swin(network)
    else:
        disable_fast_swin(network)
    volume, grid, input_box = scan.take_volume(), scan.grid, scan.input_box
    window_stats: dict = {}
    batch = plan_memory(volume.shape, input_box, bundle, device,
                        window_batch_size or windows.batch_size, lean=fast_attention)

    region = region_for(grid, image, input_box)  # the model voxels the restore reads

    def run(attempt: Attempt) -> ProbabilityStore:
        store = ProbabilityStore(manifest.num_outputs, volume.shape, grid,
                                 np.uint8 if probability_bits == 8 else np.uint16, region=region)
        model = network.to(attempt.device)
        slabs = blend_slabs(volume, LeanSegmentation(model) if fast_attention else model, manifest.num_outputs,
                            windows.with_(batch_size=attempt.window_batch), device=attempt.device,
                            stitch_device=attempt.stitch_device, autocast=autocast,
                            progress=lambda f, m: progress("inference", f, m), stats=window_stats,
                            keep=region)
        for slab in slabs:
            store.put_logits(slab.start, slab.stop, slab.logits, slab.offset_yz)
            del slab  # let its accumulator go before the next windows run
        return store

    store, attempt = run_with_memory_fallback(run, device, batch, log.warning)
    batch = attempt.window_batch
    volume = None  # the model-grid input is freed as soon as the last window has run (closure cell too)
    timings["inference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("restore", 0.0, "back to the input grid")
    labels, probs = restore_labels(store, image, input_box, table, keep, probabilities, method=restore)
    timings["restore_s"] = time.perf_counter() - start
    progress("restore", 1.0, "")
    return SegmentationResult(labels, keep, probs, {**window_stats, "window_batch_size": batch, **timings})


def restore_to_input(probs_xyz: np.ndarray, grid: sitk.Image, image: sitk.Image, box: IndexBox,
                     table: LabelTable, keep: LabelTable, want_probabilities: bool
                     ) -> tuple[sitk.Image, dict[str, sitk.Image] | None]:
    """Labels on the input grid from a full (C, X, Y, Z) probability array on the model grid.

    The whole-array form of `restore.restore_labels` (kept as 16-bit probabilities), for callers
    that already hold every class at once.
    """
    store = ProbabilityStore(probs_xyz.shape[0], probs_xyz.shape[1:], grid, np.uint16)
    store.put_probabilities(0, probs_xyz.shape[1], torch.as_tensor(probs_xyz))
    return restore_labels(store, image, box, table, keep, want_probabilities)

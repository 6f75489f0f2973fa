"""Segmentation of a CT volume: preprocess, sliding windows, and labels back on the input grid.

Why class probabilities, not labels, are resampled back to the input grid: the model grid is
coarser than most CT grids (1.5 mm vs 0.7 mm in-plane). Nearest-neighbour resampling of an argmax
label map would copy each coarse voxel into a staircase block and shift boundaries by up to half
a coarse voxel; linear interpolation of each class's probability followed by the argmax on the
input grid puts each boundary where the probabilities cross, smoothly and at sub-voxel
precision. Classes are resampled one at a time into a running maximum, so no per-class volume
on the input grid is ever held in full, and only the cropped part of the input grid is touched
(voxels outside the body crop are background).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.bundle.loader import LoadedBundle
from coralbay.inference.sliding_window import sliding_window_logits
from coralbay.labels import LabelTable
from coralbay.preprocess import IndexBox, grid_image, input_subgrid, prepare

Progress = Callable[[str, float, str], None]


@dataclass
class SegmentationResult:
    labels: sitk.Image                         # UInt8/UInt16 on exactly the input grid
    label_table: LabelTable                    # the labels present in the output's table
    probabilities: dict[str, sitk.Image] | None = None  # per structure, float32 on the input grid
    stats: dict = field(default_factory=dict)


def _noop(stage: str, fraction: float, message: str = "") -> None:
    return None


def segment_image(image: sitk.Image, bundle: LoadedBundle, device: torch.device, *,
                  overlap: float | None = None, roi_lps: Sequence[float] | None = None,
                  structures: Sequence[str] | None = None, probabilities: bool = False,
                  window_batch_size: int | None = None, skip_empty: bool = True,
                  progress: Progress = _noop) -> SegmentationResult:
    """Segment `image` with a segmentation bundle; the label map lies on `image`'s grid."""
    manifest = bundle.manifest
    infer = manifest.inference
    table = manifest.labels
    keep = table.subset(structures) if structures else table
    timings: dict[str, float] = {}

    start = time.perf_counter()
    progress("preprocess", 0.0, "cropping and resampling")
    prepared = prepare(image, manifest.preprocessing, roi_lps)
    timings["preprocess_s"] = time.perf_counter() - start
    progress("preprocess", 1.0, f"model grid {prepared.array.shape}")

    start = time.perf_counter()
    network = bundle.network.to(device)
    logits, window_stats = sliding_window_logits(
        prepared.array, network, infer["window_size"], manifest.num_outputs,
        overlap=infer["overlap"] if overlap is None else overlap, blend=infer["blend"],
        sigma_scale=infer["sigma_scale"], batch_size=window_batch_size or infer["window_batch_size"],
        device=device, skip_empty=skip_empty,
        progress=lambda f, m: progress("inference", f, m))
    timings["inference_s"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("restore", 0.0, "back to the input grid")
    torch.softmax(logits, dim=0, out=logits)
    labels, probs = restore_to_input(logits.numpy(), prepared.grid, image, prepared.input_box,
                                     table, keep, probabilities)
    timings["restore_s"] = time.perf_counter() - start
    progress("restore", 1.0, "")
    return SegmentationResult(labels, keep, probs, {**window_stats, **timings})


def restore_to_input(probs_xyz: np.ndarray, grid: sitk.Image, image: sitk.Image, box: IndexBox,
                     table: LabelTable, keep: LabelTable, want_probabilities: bool
                     ) -> tuple[sitk.Image, dict[str, sitk.Image] | None]:
    """Argmax of linearly resampled class probabilities on the input grid (see module docstring).

    Channel c of `probs_xyz` is background for c = 0, else `table`'s c-th label.
    """
    target = input_subgrid(image, box)
    best_value = None
    best_class = np.zeros(target.GetSize()[::-1], dtype=np.uint16)
    values = [0] + [lab.value for lab in table]
    kept = {lab.value for lab in keep}
    out_probs: dict[str, sitk.Image] = {}
    for channel, value in enumerate(values):
        moved = sitk.Resample(grid_image(probs_xyz[channel], grid), target, sitk.Transform(),
                              sitk.sitkLinear, 1.0 if channel == 0 else 0.0, sitk.sitkFloat32)
        prob = sitk.GetArrayViewFromImage(moved)
        if best_value is None:
            best_value = np.array(prob, copy=True)
        else:
            better = prob > best_value
            best_value[better] = prob[better]
            best_class[better] = channel
        if want_probabilities and channel and value in kept:
            out_probs[table.by_value(value).name] = _paste(moved, image, box, 0.0, sitk.sitkFloat32)
    lookup = np.array([v if (v in kept) else 0 for v in values], dtype=np.uint16)
    label_array = lookup[best_class]
    dtype = np.uint8 if max(values) < 256 else np.uint16
    sub = sitk.GetImageFromArray(label_array.astype(dtype))
    sub.CopyInformation(target)
    pixel = sitk.sitkUInt8 if dtype == np.uint8 else sitk.sitkUInt16
    return _paste(sub, image, box, 0, pixel), (out_probs if want_probabilities else None)


def _paste(sub: sitk.Image, image: sitk.Image, box: IndexBox, fill: float, pixel: int) -> sitk.Image:
    """Place a sub-grid image into a full image on `image`'s grid, `fill` elsewhere."""
    full = sitk.Image(image.GetSize(), pixel)
    full.CopyInformation(image)
    if fill:
        full += fill
    return sitk.Paste(full, sitk.Cast(sub, pixel), sub.GetSize(), [0, 0, 0], [int(v) for v in box.lower])

"""The baseline: segmentation the way a MONAI user writes it, on the same bundle's network.

MONAI transforms load the file (LoadImage with its default reader choice), put the channel first, reorient to RAS, resample to
the bundle's spacing (bilinear) and scale the bundle's HU window to [0, 1];
`monai.inferers.sliding_window_inference` runs the network with the bundle's window size,
overlap, Gaussian blending, sigma and window batch, on the whole (uncropped) volume. Back to the
input grid, by default as MONAI's own bundles and its spleen tutorial do (`invert="probabilities"`):
softmax, `Invertd` with the forward interpolation (bilinear), argmax on the input grid. With
`invert="labels"`: argmax on the model grid, then `Invertd` with nearest neighbour. The network
runs MONAI's own Swin forward.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from coralbay_bench import BASELINE_INVERT_MODES
from coralbay_bench.our_path import PathRun, no_mark, synchronize
from coralbay.bundle.loader import LoadedBundle
from coralbay.inference.fast_swin import disable_fast_swin
from coralbay.inference.sliding_window import windows_needed


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def input_geometry(path: Path) -> tuple[tuple, tuple, tuple, tuple]:
    """(size, spacing, origin, direction) of the input as SimpleITK (and our path) reads it."""
    if path.is_dir():
        from coralbay.io.volumes import read_volume

        image = read_volume(path)
        return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def run_monai_path(input_path: Path, bundle: LoadedBundle, device: torch.device, *, overlap: float,
                   window_batch: int | None, precision: str, invert: str = "probabilities",
                   mark: Callable[[str], None] = no_mark) -> PathRun:
    """Run the MONAI pipeline and return its labels as an image on the input grid.

    `mark(stage)` is called as each stage (load, preprocess, inference, restore) begins."""
    if invert not in BASELINE_INVERT_MODES:
        raise ValueError(f"invert must be one of {BASELINE_INVERT_MODES}, not {invert!r}")
    from monai.inferers import sliding_window_inference
    from monai.transforms import (Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                                  ScaleIntensityRanged, Spacingd)

    manifest = bundle.manifest
    pre, infer = manifest.preprocessing, manifest.inference
    lo, hi = pre["intensity_window_hu"]
    batch = window_batch or int(infer["window_batch_size"])
    window = tuple(int(w) for w in infer["window_size"])
    network = bundle.network
    disable_fast_swin(network)
    stages: dict[str, float] = {}
    begin = time.perf_counter()
    mark("load")
    data = Compose([LoadImaged(keys="image"),
                    EnsureChannelFirstd(keys="image")])({"image": str(input_path)})
    stages["load"] = time.perf_counter() - begin

    start = time.perf_counter()
    mark("preprocess")
    spatial = Compose([Orientationd(keys="image", axcodes="RAS"),
                       Spacingd(keys="image", pixdim=tuple(pre["spacing_mm"]), mode="bilinear"),
                       ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)])
    data = spatial(data)
    stages["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    mark("inference")
    inputs = data["image"][None].to(device)
    with torch.inference_mode(), _autocast(device, precision):
        logits = sliding_window_inference(inputs, window, batch, network, overlap=overlap,
                                          mode=infer["blend"], sigma_scale=infer["sigma_scale"])
    synchronize(device)
    stages["inference"] = time.perf_counter() - start
    model_grid = [int(v) for v in inputs.shape[2:]]
    del inputs

    start = time.perf_counter()
    mark("restore")
    if invert == "probabilities":
        data["pred"] = torch.softmax(logits[0], dim=0)  # (C, X, Y, Z), keeps the model grid's metadata
        del logits
        data = Invertd(keys="pred", transform=spatial, orig_keys="image", nearest_interp=False)(data)
        channels = torch.argmax(data["pred"], dim=0).cpu().numpy().astype(np.int64)
    else:
        data["pred"] = torch.argmax(logits, dim=1)  # (1, X, Y, Z), keeps the model grid's metadata
        del logits
        data = Invertd(keys="pred", transform=spatial, orig_keys="image", nearest_interp=True)(data)
        channels = np.asarray(data["pred"][0].cpu().numpy(), dtype=np.int64)
    values = np.array([0] + [lab.value for lab in manifest.labels], dtype=np.uint16)
    labels = sitk.GetImageFromArray(values[channels].transpose(2, 1, 0).astype(
        np.uint8 if values.max() < 256 else np.uint16))
    size, spacing, origin, direction = input_geometry(input_path)
    if labels.GetSize() != tuple(size):
        raise RuntimeError(f"MONAI's inverted labels have size {labels.GetSize()}, the input {tuple(size)}")
    labels.SetSpacing(spacing)
    labels.SetOrigin(origin)
    labels.SetDirection(direction)
    stages["restore"] = time.perf_counter() - start
    total = time.perf_counter() - begin

    total_windows = windows_needed(model_grid, window, overlap)
    return PathRun(labels=labels, stages_s=stages, total_s=total,
                   stats={"windows_total": total_windows, "windows_evaluated": total_windows,
                          "window_batch_size": batch, "model_grid_shape": model_grid})

"""Ours: exactly `coralbay segment`'s code path (read the volume, then `segment_image`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import SimpleITK as sitk
import torch

from coralbay.bundle.loader import LoadedBundle


@dataclass
class PathRun:
    """One pipeline run: labels on the input grid, wall time per stage and in total, counters."""

    labels: sitk.Image
    stages_s: dict[str, float]
    total_s: float
    stats: dict = field(default_factory=dict)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def no_mark(stage: str) -> None:
    return None


def run_our_path(input_path: Path, bundle: LoadedBundle, device: torch.device, *, overlap: float,
                 window_batch: int | None, precision: str, restore: str = "linear",
                 mark: Callable[[str], None] = no_mark) -> PathRun:
    """`mark(stage)` is called as each stage (load, preprocess, inference, restore) begins."""
    from coralbay.inference.segment import segment_image
    from coralbay.io.volumes import read_volume

    begin = time.perf_counter()
    mark("load")
    image = read_volume(input_path)
    load_s = time.perf_counter() - begin
    current = ["load"]

    def progress(stage: str, fraction: float, message: str = "") -> None:
        if stage != current[0]:
            current[0] = stage
            mark(stage)

    result = segment_image(image, bundle, device, overlap=overlap, window_batch_size=window_batch,
                           autocast=precision == "bf16", restore=restore, progress=progress)
    synchronize(device)
    total = time.perf_counter() - begin
    stats = result.stats
    stages = {"load": load_s, "preprocess": stats["preprocess_s"], "inference": stats["inference_s"],
              "restore": stats["restore_s"]}
    keep = ("windows_total", "windows_evaluated", "window_batch_size", "model_grid_shape")
    return PathRun(labels=result.labels, stages_s=stages, total_s=total,
                   stats={k: stats[k] for k in keep if k in stats})

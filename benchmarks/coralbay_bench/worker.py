"""One benchmark path in its own process: `python -m coralbay_bench.worker --path monai|ours ...`.

Why a process per path: peak memory is only meaningful for a process that ran one pipeline, and
neither path may inherit the other's caches, allocator state or warmed-up kernels. The worker
imports everything, loads the bundle, counts FLOPs, runs one warm-up window, and only then
takes its memory baseline and runs the path once; it writes the labels and a JSON result.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

import torch

from coralbay_bench import BASELINE_INVERT_MODES

PATHS = ("monai", "ours")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coralbay_bench.worker")
    p.add_argument("--path", choices=PATHS, required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--labels", required=True, help="where to write the label map (.nrrd)")
    p.add_argument("--result", required=True, help="where to write the JSON result")
    p.add_argument("--overlap", type=float, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--window-batch", type=int)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--spacing", type=float, nargs=3, help="override the bundle's model spacing (mm)")
    p.add_argument("--no-crop", action="store_true", help="switch off the bundle's body crop (ours)")
    p.add_argument("--max-windows", type=int, help="diagnostic: network on the first K windows only")
    p.add_argument("--restore", choices=("linear", "nearest"), default="linear",
                   help="how ours brings labels back to the input grid")
    p.add_argument("--baseline-invert", choices=BASELINE_INVERT_MODES, default=BASELINE_INVERT_MODES[0],
                   help="how the MONAI baseline goes back to the input grid")
    return p.parse_args(argv)


def warm_up(network, window, batch: int, device, precision: str, fast: bool) -> None:
    """One forward pass in the path's own configuration (kernels, allocator, cuDNN choice)."""
    import torch

    from coralbay.inference.fast_swin import disable_fast_swin, enable_fast_swin

    (enable_fast_swin if fast else disable_fast_swin)(network)
    autocast = precision == "bf16" and device.type == "cuda"
    context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), context:
        network(torch.zeros((batch, 1, *window), device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WindowLimit(torch.nn.Module):
    """Diagnostic (`--max-windows K`): the network's own forward (ours: the lean one) on the
    first K windows, zero logits of the right shape for the others. The pipeline around it,
    stitching and restore over the whole volume, runs in full, so its memory is measured."""

    def __init__(self, network: torch.nn.Module, limit: int, lean: bool) -> None:
        super().__init__()
        from coralbay.inference.lean_forward import LeanSegmentation

        self.network = LeanSegmentation(network) if lean else network
        self.limit, self.done = limit, 0
        self.classes = network.decoder.out.conv.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.done >= self.limit:
            return torch.zeros((x.shape[0], self.classes, *x.shape[2:]), dtype=x.dtype, device=x.device)
        self.done += x.shape[0]
        return self.network(x)


def main(argv=None) -> int:
    args = parse(argv)
    import numpy as np  # noqa: F401  (imports are part of the baseline, not of the run)
    import SimpleITK as sitk
    import torch
    import monai.inferers  # noqa: F401
    import monai.transforms  # noqa: F401

    from coralbay_bench.flops import flops_per_window
    from coralbay_bench.memory import PeakMemory
    from coralbay_bench.monai_path import run_monai_path
    from coralbay_bench.our_path import run_our_path
    from coralbay.bundle.loader import load_bundle
    from coralbay.device import select_device

    device = select_device(args.device)
    bundle = load_bundle(args.model)
    if args.spacing:
        bundle.manifest.data["preprocessing"]["spacing_mm"] = list(args.spacing)
    if args.no_crop:
        bundle.manifest.data["preprocessing"]["crop_foreground"] = False
    infer = bundle.manifest.inference
    window = tuple(int(w) for w in infer["window_size"])
    bundle.network.to(device)
    flops = flops_per_window(bundle.network, window)
    batch = args.window_batch or int(infer["window_batch_size"])
    warm_up(bundle.network, window, batch, device, args.precision, fast=args.path == "ours")
    if args.max_windows:
        bundle.network = WindowLimit(bundle.network, args.max_windows, lean=args.path == "ours")
    gc.collect()

    cpu_before = time.process_time()
    with PeakMemory(device) as peak:
        if args.path == "monai":
            run = run_monai_path(Path(args.input), bundle, device, overlap=args.overlap,
                                 window_batch=batch, precision=args.precision, invert=args.baseline_invert,
                                 mark=peak.stage)
        else:
            run = run_our_path(Path(args.input), bundle, device, overlap=args.overlap,
                               window_batch=batch, precision=args.precision, restore=args.restore,
                               mark=peak.stage)
    cpu_s = time.process_time() - cpu_before  # all threads: less sensitive than wall time to a shared CPU
    sitk.WriteImage(run.labels, args.labels, False)
    result = {
        "path": args.path, "device": str(device), "precision": args.precision,
        "stages_s": {k: round(v, 4) for k, v in run.stages_s.items()}, "total_s": round(run.total_s, 4),
        "cpu_s": round(cpu_s, 3),
        "base_rss_mb": round(peak.base_rss_mb, 1), "peak_rss_added_mb": round(peak.added_rss_mb, 1),
        "peak_rss_added_mb_by_stage": peak.added_rss_mb_by_stage,
        "peak_gpu_added_mb": None if peak.added_gpu_mb is None else round(peak.added_gpu_mb, 1),
        "peak_gpu_added_mb_by_stage": peak.added_gpu_mb_by_stage,
        "peak_gpu_mb": None if peak.peak_gpu_mb is None else round(peak.peak_gpu_mb, 1),
        "flops_per_window": flops, "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in bundle.network.parameters()),
        "windows_run_by_network": bundle.network.done if args.max_windows else None, **run.stats,
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

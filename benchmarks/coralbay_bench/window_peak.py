"""Peak memory and time of ONE sliding window's forward pass, per path, in this process.

`python -m coralbay_bench.window_peak --path ours|monai --feature-size F --window N [--batch B]`
builds a random-weight segmentation network of that width, runs one warm-up forward on a small
input (kernels, allocator), then measures one forward of B windows of N^3 voxels: the resident
memory it adds (the weights are already resident; they are reported apart), its wall time, and
prints one JSON line. Run each path in its own process (the figures are per process).

Why: at U96H (F=192) a whole-CT comparison takes hours on a CPU, but the peak of one window is
what decides whether a machine can run the model at all; `resources.ACTIVATION_TABLE` is
calibrated from these figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coralbay_bench.window_peak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", choices=("ours", "monai"), required=True)
    p.add_argument("--feature-size", type=int, default=48)
    p.add_argument("--window", type=int, default=96)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=14, help="output channels incl. background")
    p.add_argument("--project-dims", help="comma-separated decoder projections (U96H: 48,48,96,192,384,768)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from coralbay_bench.memory import PeakMemory
    from coralbay.inference.fast_swin import disable_fast_swin, enable_fast_swin
    from coralbay.inference.lean_forward import LeanSegmentation
    from coralbay.inference.sliding_window import autocast_context
    from coralbay.model import ArchitectureSpec, build_network, count_parameters

    device = torch.device(args.device)
    dims = tuple(int(v) for v in args.project_dims.split(",")) if args.project_dims else None
    torch.manual_seed(0)
    with torch.device(device):
        network = build_network(ArchitectureSpec("segmentation", feature_size=args.feature_size,
                                                 out_channels=args.classes, project_dims=dims)).eval()
    if args.path == "ours":
        enable_fast_swin(network)
        forward = LeanSegmentation(network)
    else:
        disable_fast_swin(network)
        forward = network
    autocast = autocast_context(device, args.precision == "bf16")
    with torch.inference_mode(), autocast:
        forward(torch.rand((1, 1, 64, 64, 64), device=device))  # warm-up: kernels, allocator
    gc.collect()
    x = torch.rand((args.batch, 1, *(args.window,) * 3), device=device)
    with PeakMemory(device) as peak, torch.inference_mode(), autocast:
        begin = time.perf_counter()
        out = forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - begin
    del out
    print(json.dumps({
        "path": args.path, "feature_size": args.feature_size, "window": args.window, "batch": args.batch,
        "classes": args.classes, "project_dims": list(dims) if dims else None, "device": str(device),
        "precision": args.precision, "parameters": count_parameters(network),
        "weights_mb": round(count_parameters(network) * 4 / 2 ** 20, 1),
        "forward_s": round(seconds, 3), "peak_rss_added_mb": round(peak.added_rss_mb, 1),
        "peak_gpu_added_mb": None if peak.added_gpu_mb is None else round(peak.added_gpu_mb, 1),
        "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

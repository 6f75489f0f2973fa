"""Time (and profile) one U96B window: MONAI's forward vs ours, interleaved in one process.

Usage: python benchmarks/diagnostics/profile_window.py [--repeats N] [--profile ours|monai|none]
Timings on a shared CPU are noisy: compare the medians of the interleaved runs, not single runs;
with `--threads 1` the process CPU time (also printed) is far less disturbed by other work.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import time

import torch

from coralbay.inference.fast_swin import disable_fast_swin, enable_fast_swin
from coralbay.inference.lean_forward import LeanSegmentation
from coralbay.model import ArchitectureSpec, build_network


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", choices=("ours", "monai", "none"), default="none")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if os.environ.get("PROFILE_MALLOPT"):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2 ** 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1024 * 2 ** 20)  # M_TRIM_THRESHOLD
    torch.manual_seed(0)
    network = build_network(ArchitectureSpec("segmentation", feature_size=args.feature_size, out_channels=14)).eval()
    lean = LeanSegmentation(network)
    x = torch.rand(args.batch, 1, args.window, args.window, args.window)

    def monai() -> torch.Tensor:
        disable_fast_swin(network)
        return network(x)

    def ours() -> torch.Tensor:
        enable_fast_swin(network)
        return lean(x)

    times: dict[str, list[float]] = {"monai": [], "ours": []}
    cpu: dict[str, list[float]] = {"monai": [], "ours": []}
    with torch.inference_mode():
        ref, out = monai(), ours()  # warm-up
        err = float((out - ref).abs().max() / ref.abs().max())
        print(f"relative max difference {err:.2e}")
        for _ in range(args.repeats):
            for name, run in (("monai", monai), ("ours", ours)):
                start, start_cpu = time.perf_counter(), time.process_time()
                start_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime
                run()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - start_sys
                print(f"{name} {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU ({system:.2f} s system)",
                      flush=True)
        if args.repeats:
            m, o = statistics.median(times["monai"]), statistics.median(times["ours"])
            print(f"median wall: monai {m:.2f} s, ours {o:.2f} s, ratio {o / m:.3f}")
            m, o = statistics.median(cpu["monai"]), statistics.median(cpu["ours"])
            print(f"median CPU: monai {m:.2f} s, ours {o:.2f} s, ratio {o / m:.3f}")
        if args.profile != "none":
            run = ours if args.profile == "ours" else monai
            with torch.profiler.profile(record_shapes=True) as prof:
                run()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

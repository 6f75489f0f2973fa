"""GPU check: CoralBay U96B and U96H on a phantom, ours against MONAI, fp32 and bf16.

`python -m coralbay_bench.gpu_check` (or Testing/gpu_check.sh) builds random-weight segmentation
bundles of the two published sizes (U96B: feature size 48; U96H: feature size 192 with the
lightweight decoder's projections 48,48,96,192,384,768; 96^3 windows, 14 structures), a phantom
at 1.5 mm (192^3 by default: 27 windows at overlap 0.5), runs `coralbay bench` (both paths in
their own processes, body crop off so both evaluate the same windows) for every model and
precision, writes gpu-<model>-<precision>.json and prints one table: time per path, windows/s,
achieved TFLOP/s and its fraction of the GPU's peak dense bf16 rate (`machine.PEAK_BF16_TFLOPS`),
peak GPU memory (weights included) and added host memory, ratios ours/MONAI, Dice agreement, and
the verdict on the targets of issue 13: ours >= 3x MONAI's speed at U96B bf16, and U96H's peak
GPU memory within 16 GB at bf16. Sized to finish well within 10 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MODELS = {  # name -> (feature size, decoder projections)
    "U96B": (48, None),
    "U96H": (192, (48, 48, 96, 192, 384, 768)),
}
TARGET_SPEEDUP_U96B_BF16 = 3.0   # ours at least 3x faster than MONAI (issue 13)
TARGET_U96H_GPU_GB = 16.0        # ours' peak GPU memory for U96H at bf16, weights included
NO_CUDA = "gpu_check: no CUDA GPU is visible to PyTorch, so there is nothing to measure here."


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coralbay_bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=192, help="phantom edge in voxels (default 192)")
    p.add_argument("--spacing", type=float, default=1.5, help="phantom and model spacing in mm")
    p.add_argument("--models", default="U96B,U96H", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--window", type=int, default=96)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--window-batch", type=int, default=2, help="windows per call, both paths (default 2)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=".", help="folder for gpu-<model>-<precision>.json")
    return p.parse_args(argv)


def verdicts(results: dict[tuple[str, str], dict]) -> list[str]:
    """The targets, where the runs needed for them are present."""
    lines = []
    u96b = results.get(("U96B", "bf16"))
    if u96b and u96b["ratios"]["time"]:
        speedup = 1 / u96b["ratios"]["time"]
        lines.append(f"U96B bf16: ours {speedup:.2f}x MONAI's speed (target >= {TARGET_SPEEDUP_U96B_BF16:g}x: "
                     f"{'met' if speedup >= TARGET_SPEEDUP_U96B_BF16 else 'NOT met'})")
    u96h = results.get(("U96H", "bf16"))
    if u96h:
        peak = u96h["paths"]["ours"]["median"]["peak_gpu_mb"]
        if peak is not None:
            gb = peak * 2 ** 20 / 1e9
            lines.append(f"U96H bf16: ours' peak GPU memory {gb:.2f} GB (target <= {TARGET_U96H_GPU_GB:g} GB: "
                         f"{'met' if gb <= TARGET_U96H_GPU_GB else 'NOT met'})")
    return lines


def table(results: dict[tuple[str, str], dict]) -> str:
    """The comparison as text, one row per model, precision and path."""
    first = next(iter(results.values()))
    gpu = first["machine"].get("gpu") or {}
    peak = gpu.get("peak_bf16_flops")
    lines = [f"GPU: {gpu.get('name', 'none')}; peak dense bf16: "
             + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (add it to machine.PEAK_BF16_TFLOPS)"),
             f"input {first['input'].get('size')} at {first['input'].get('spacing')} mm; window "
             f"{first['model']['window_size']}, {first['model']['structures']} structures; overlap "
             f"{first['settings']['overlap']}; window batch {first['settings']['window_batch']}",
             f"{'model':<6}{'prec':<6}{'path':<7}{'total s':>9}{'infer s':>9}{'windows':>8}{'win/s':>8}"
             f"{'TFLOP/s':>9}{'% peak':>8}{'GPU MB':>9}{'+RSS MB':>9}"]
    for (model, precision), result in results.items():
        for name in ("monai", "ours"):
            m = result["paths"][name]["median"]
            frac = m.get("fraction_of_peak_bf16")
            lines.append(f"{model:<6}{precision:<6}{name:<7}{m['total_s']:>9.2f}{m['stages_s']['inference']:>9.2f}"
                         f"{m['windows_evaluated']:>8d}{(m['windows_per_s'] or 0):>8.2f}"
                         f"{(m['achieved_flops_per_s'] or 0) / 1e12:>9.1f}"
                         f"{(100 * frac if frac else float('nan')):>8.1f}"
                         f"{(m['peak_gpu_mb'] or float('nan')):>9.0f}{m['peak_rss_added_mb']:>9.0f}")
    for (model, precision), result in results.items():
        r, a = result["ratios"], result["agreement"]
        speedup = 1 / r["time"] if r["time"] else float("nan")
        lines.append(f"{model} {precision}: ours/monai time {r['time']} ({speedup:.2f}x), inference "
                     f"{r['inference_time']}; GPU memory {r['gpu_memory']}; host memory {r['memory']}; "
                     f"Dice min {a['min_dice']} over {a['judged']} structures > 1 mL")
    return "\n".join(lines + verdicts(results))


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from coralbay_bench import inputs
    from coralbay_bench.runner import BenchSettings, run_benchmark

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"gpu_check: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], dict] = {}
    begin = time.time()
    with tempfile.TemporaryDirectory(prefix="coralbay-gpu-check-") as tmp:
        work = Path(tmp)
        volume = inputs.synthetic_volume(args.size, args.spacing, work)
        for model_name in models:
            feature_size, dims = MODELS[model_name]
            folder = work / model_name
            folder.mkdir()
            model = inputs.random_bundle(folder, args.classes, template=None, feature_size=feature_size,
                                         window=(args.window,) * 3, spacing_mm=(args.spacing,) * 3,
                                         project_dims=dims)
            print(f"prepared {model_name} and the {args.size}^3 phantom at {time.time() - begin:.0f} s", flush=True)
            for precision in args.precisions.split(","):
                settings = BenchSettings(input_path=volume, model=model, overlap=args.overlap,
                                         device=args.device, precision=precision, workdir=folder,
                                         window_batch=args.window_batch, no_crop=True)
                info = {"command": f"python -m coralbay_bench.gpu_check ({model_name}, {precision})",
                        "input": {"synthetic": args.size, "spacing_mm": args.spacing,
                                  "size": [args.size] * 3, "spacing": [args.spacing] * 3},
                        "random_weights": True}
                result = run_benchmark(settings, info, log=lambda m: print(m, flush=True))
                results[(model_name, precision)] = result
                (out / f"gpu-{model_name}-{precision}.json").write_text(json.dumps(result, indent=2) + "\n",
                                                                        encoding="utf-8")
                print(f"{model_name} {precision} done at {time.time() - begin:.0f} s", flush=True)
    print(table(results))
    print(f"gpu_check finished in {time.time() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`coralbay bench`: our segmentation path against the plain MONAI path, same weights and volume."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from coralbay.commands._common import EPILOG, overlap_value, positive_int
from coralbay.errors import UsageError
from coralbay_bench import BASELINE_INVERT_MODES

DESCRIPTION = """\
Benchmark `coralbay segment`'s code path ("ours") against the plain MONAI path ("monai": MONAI
transforms, sliding_window_inference with the same window, overlap, Gaussian blending and window
batch; back to the input grid as MONAI's bundles do: softmax, Invertd, argmax) on the same bundle
weights and volume. Each path runs in its own child process; with --repeat N they alternate and
the median is reported.
Reported per path: wall time per stage (load, preprocess, inference, restore) and in total, peak
resident memory added by the run (above the level after imports, model loading and one warm-up
window), peak GPU memory on CUDA, windows evaluated, windows/s, model FLOPs per window, achieved
FLOP/s (and the fraction of the GPU's peak bf16 rate); ratios ours/monai; per-structure Dice of
our labels against MONAI's, judged where MONAI labels more than 1 mL.
"""

EXAMPLES = """\
examples:
  coralbay bench ct.nrrd --model demo-phantom-seg --json bench.json --resample-to 1.5 --repeat 3
  coralbay bench --synthetic 300 --classes 14 --model demo-phantom-seg --json big.json
  coralbay bench --synthetic 128 --classes 4 --feature-size 6 --window 64 --json tiny.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from coralbay.device import DEVICE_CHOICES

    p = subparsers.add_parser("bench", help="time and memory of our path against the plain MONAI path",
                              description=DESCRIPTION, epilog=EXAMPLES + "\n" + EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", metavar="INPUT", help="CT volume file (or use --synthetic)")
    p.add_argument("--model", "-m", metavar="M",
                   help="catalog name or bundle folder (with --classes: the architecture to copy)")
    p.add_argument("--json", required=True, metavar="OUT.json", help="where to write the full results")
    p.add_argument("--overlap", type=overlap_value, metavar="F", help="window overlap (default: the bundle's)")
    p.add_argument("--spacing", metavar="MM[,MM,MM]", help="model grid spacing in mm (default: the bundle's)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES, help="compute device (default cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="network precision for both paths; bf16 autocast needs CUDA (default fp32)")
    p.add_argument("--window-batch", type=positive_int, metavar="N",
                   help="windows per network call for both paths (default: the bundle's)")
    p.add_argument("--resample-to", type=float, metavar="MM",
                   help="first resample INPUT to isotropic MM (both paths then read that copy)")
    p.add_argument("--synthetic", type=positive_int, metavar="N",
                   help="use an N^3 synthetic abdominal CT phantom instead of INPUT")
    p.add_argument("--synthetic-spacing", type=float, default=1.5, metavar="MM",
                   help="voxel spacing of the phantom (default 1.5)")
    p.add_argument("--classes", type=positive_int, metavar="K",
                   help="use a random-weight bundle with K structures (architecture from --model, "
                        "else from --feature-size and --window)")
    p.add_argument("--feature-size", type=positive_int, default=6, metavar="F",
                   help="width of the random bundle without --model (default 6; CoralBay U96B is 48)")
    p.add_argument("--window", type=positive_int, default=64, metavar="N",
                   help="window edge of the random bundle without --model (default 64)")
    p.add_argument("--project-dims", metavar="D0,...,D5",
                   help="decoder projections of the random bundle without --model (CoralBay U96H's "
                        "lightweight decoder: 48,48,96,192,384,768)")
    p.add_argument("--max-windows", type=positive_int, metavar="K",
                   help="diagnostic: each path runs the network on its first K windows only and gives "
                        "the others zero logits, so the whole pipeline's memory (stitching, restore) is "
                        "measured on a model too slow to run everywhere; times and labels then mean nothing")
    p.add_argument("--no-crop", action="store_true",
                   help="diagnostic: switch off our body crop, so both paths place windows alike")
    p.add_argument("--restore", choices=("linear", "nearest"), default="linear",
                   help="how our path brings labels back to the input grid: linear (coralbay segment's "
                        "default) or nearest (argmax labels copied from the nearest model voxel)")
    p.add_argument("--baseline-invert", choices=BASELINE_INVERT_MODES, default=BASELINE_INVERT_MODES[0],
                   help="how the MONAI baseline goes back to the input grid: probabilities (softmax, "
                        "Invertd bilinear, argmax: MONAI's own bundles; default) or labels (argmax, "
                        "Invertd nearest)")
    p.add_argument("--repeat", type=positive_int, default=1, metavar="N", help="runs per path (default 1)")
    p.add_argument("--keep", metavar="DIR", help="keep inputs, labels and per-run results in DIR")
    p.set_defaults(run=run)


def _json_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".json":
        raise UsageError(f"--json must name a .json file, not {text}.")
    if not path.parent.is_dir():
        raise UsageError(f"The folder of {text} does not exist.")
    return path


def _spacing(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError("--spacing must be one or three numbers in mm, separated by commas.") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise UsageError("--spacing must be one or three positive numbers in mm, separated by commas.")
    return values


def _project_dims(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError("--project-dims must be six whole numbers separated by commas.") from None
    if len(values) != 6 or min(values) <= 0:
        raise UsageError("--project-dims must be six positive whole numbers separated by commas.")
    return values


def _check(args: argparse.Namespace) -> None:
    if (args.input is None) == (args.synthetic is None):
        raise UsageError("Give either INPUT or --synthetic N (not both).")
    if args.model is None and args.classes is None:
        raise UsageError("Give --model (a bundle), --classes K (a random bundle), or both.")
    for option in ("resample_to", "synthetic_spacing"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise UsageError(f"--{option.replace('_', '-')} must be a positive number of mm.")
    if args.project_dims is not None and args.model is not None:
        raise UsageError("--project-dims describes a random bundle; with --model the bundle's own are used.")
    if args.input is not None and not Path(args.input).exists():
        raise UsageError(f"The input {args.input} does not exist.")


def run(args: argparse.Namespace) -> int:
    from coralbay_bench import inputs
    from coralbay_bench.runner import BenchSettings, run_benchmark
    from coralbay.atomic import write_text_atomic
    from coralbay.bundle.manifest import read_manifest
    from coralbay.bundle.catalog import resolve_model
    from coralbay.device import select_device

    _check(args)
    output = _json_path(args.json)
    spacing = _spacing(args.spacing)
    device = select_device(args.device)
    if args.precision == "bf16" and device.type != "cuda":
        raise UsageError("--precision bf16 needs a CUDA device (--device cuda).")
    with tempfile.TemporaryDirectory(prefix="coralbay-bench-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model_spacing = spacing
        if args.classes:
            model = inputs.random_bundle(workdir, args.classes, template=args.model,
                                         feature_size=args.feature_size, window=(args.window,) * 3,
                                         spacing_mm=spacing or (1.5, 1.5, 1.5),
                                         project_dims=_project_dims(args.project_dims))
        else:
            model = resolve_model(args.model)
        manifest = read_manifest(model)
        if manifest.task != "segmentation":
            raise UsageError(f"The model {manifest.name} is a {manifest.task} model; bench needs a segmentation model.")
        if args.synthetic:
            source = inputs.synthetic_volume(args.synthetic, args.synthetic_spacing, workdir)
            described = {"synthetic": args.synthetic, "spacing_mm": args.synthetic_spacing}
        elif args.resample_to:
            source = inputs.resampled_copy(args.input, args.resample_to, workdir)
            described = {"path": str(Path(args.input).resolve()), "resampled_to_mm": args.resample_to}
        else:
            source = Path(args.input)
            described = {"path": str(Path(args.input).resolve())}
        described.update(_geometry(source))
        settings = BenchSettings(input_path=source, model=model,
                                 overlap=args.overlap if args.overlap is not None else manifest.inference["overlap"],
                                 device=device.type if device.type != "cuda" else str(device),
                                 precision=args.precision, window_batch=args.window_batch,
                                 spacing=model_spacing, repeat=args.repeat, workdir=workdir,
                                 no_crop=args.no_crop, restore=args.restore,
                                 baseline_invert=args.baseline_invert, max_windows=args.max_windows)
        command = ("coralbay bench " + shlex.join(sys.argv[sys.argv.index("bench") + 1:])
                   if "bench" in sys.argv else None)
        info = {"command": command, "input": described, "random_weights": bool(args.classes)}
        result = run_benchmark(settings, info, log=lambda m: print(m, file=sys.stderr, flush=True))
    write_text_atomic(output, json.dumps(result, indent=2) + "\n")
    print(format_summary(result))
    return 0


def _geometry(path: Path) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {"size": list(reader.GetSize()), "spacing": [round(s, 4) for s in reader.GetSpacing()]}


def format_summary(result: dict) -> str:
    """A short text table of the result for the terminal."""
    rows = [f"{'':<10}{'total s':>9}{'infer s':>9}{'windows':>9}{'win/s':>8}{'+RSS MB':>9}{'GFLOP/s':>9}"]
    for name, data in result["paths"].items():
        m = data["median"]
        rows.append(f"{name:<10}{m['total_s']:>9.1f}{m['stages_s']['inference']:>9.1f}"
                    f"{m['windows_evaluated']:>9d}{(m['windows_per_s'] or 0):>8.2f}"
                    f"{m['peak_rss_added_mb']:>9.0f}{(m['achieved_flops_per_s'] or 0) / 1e9:>9.1f}")
    settings = result["settings"]
    rows.append(f"back to the input grid: ours {settings['restore']}, monai {settings['baseline_invert']}")
    r, a = result["ratios"], result["agreement"]
    rows.append(f"ours/monai: time {r['time']}, memory {r['memory']}"
                + (f", GPU memory {r['gpu_memory']}" if r.get("gpu_memory") is not None else ""))
    rows.append(f"Dice ours vs monai (structures > 1 mL: {a['judged']}): min {a['min_dice']}, "
                f"bound {a['bound']} {'holds' if a['holds'] else 'NOT met'}")
    return "\n".join(rows)

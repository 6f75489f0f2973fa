"""The teach on a GPU (issue #24; the teach case of Testing/gpu_check.sh): the loop of the phantom
targets at the demo size, and the cost of a teach at CoralBay U96B's size.

Run from the repository root (Testing/gpu_check.sh runs it with `--device cuda`):
    PYTHONPATH=CoralBaySlicer:benchmarks python benchmarks/interactive/teach_gpu.py --device cuda --out DIR

`demo` (development data only: example scans 10010-10014, scored on phantoms 10000-10002, as
teach_targets.py --set dev): `coralbay teach` from demo-phantom-seg on 4 scans, then `--from` it on
5 (its crop store holds scans 1-4: the encoder runs on scan 5 only), and from scratch on 5 with an
empty store, each timed as a process; mean Dice of each model on the scoring phantoms (scored on
the CPU in this process, as teach_targets.py does); the
incremental / scratch time ratio (target <= 0.40).

`u96b`: a random-weight segmentation bundle of CoralBay U96B's size (F=48, 96^3 windows at 1.5 mm;
random weights, so no Dice is reported) and one example phantom at 1.5 mm with its 7 reference
structures accepted. Three teaches on it: `--steps 5` with an empty crop store (the encoder over
the crops, then 5 steps), `--steps 5` again (crops from the store) and `--steps 25` (from the
store). So: the crop pool's cost = first - second, a step's cost = (third - second) / 20, and a first
teach of 200 steps (the ceiling) is projected as first + 195 steps.

Every figure comes with the device's name; each teach is a separate process (what a user runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teach as bench  # noqa: E402  (the phantoms and accepted references of the teach benchmarks)
import teach_targets  # noqa: E402  (the in-process scoring of taught models)

TARGET_INCREMENTAL_SHARE = 0.40
PROJECTED_STEPS = 200


def _teach(examples: Path, base: str, output: Path, home: Path, device: str, *extra: str) -> dict:
    """`coralbay teach` as a process with its own CORALBAY_HOME (its crop store); wall seconds and
    the taught bundle's training record."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "coralbay", "teach", str(examples), "--model", base, "--name", output.name,
                    "--output", str(output), "--no-catalog", "--device", device, "--progress", "none", *extra],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "CORALBAY_HOME": str(home)})
    wall = time.perf_counter() - started
    training = json.loads((output / "manifest.json").read_text())["metrics"]["training"]
    return {"wall_s": round(wall, 2), "steps": training["steps"], "stopped": training["stopped"],
            "train_seconds": training["seconds"]}


def _accept(seeds: list[int], folder: Path, examples: Path, base: str) -> None:
    bundle = bench.load_bundle(base)
    for seed in seeds:
        ct, labels = bench.phantom(seed, folder)
        bench.accept_reference(ct, labels, examples, bundle)


def demo_case(work: Path, device: str, example_seeds: list[int], score_seeds: list[int], steps: int | None) -> dict:
    """scratch on all but the last scan, incremental to all, scratch on all (module docstring)."""
    extra = ("--steps", str(steps)) if steps else ()
    first, every = work / "examples-first", work / "examples-all"
    _accept(example_seeds[:-1], work, first, bench.BASE)
    _accept(example_seeds, work, every, bench.BASE)
    n = len(example_seeds)
    runs = {f"scratch-{n - 1}": _teach(first, bench.BASE, work / f"scratch-{n - 1}", work / "home-chain", device, *extra)}
    runs[f"incremental-{n}"] = _teach(every, bench.BASE, work / f"incremental-{n}", work / "home-chain", device,
                                      "--from", str(work / f"scratch-{n - 1}"), *extra)
    runs[f"scratch-{n}"] = _teach(every, bench.BASE, work / f"scratch-{n}", work / "home-scratch", device, *extra)
    cases = [(str(seed), *(sitk.ReadImage(str(path)) for path in bench.phantom(seed, work))) for seed in score_seeds]
    for name, run in runs.items():   # scored on the CPU, in this process: the demo model is small
        scored = teach_targets.dice_table(work / name, cases)
        run["dice"], run["mean_dice"] = scored["dice"], scored["mean_dice"]
    share = runs[f"incremental-{n}"]["wall_s"] / runs[f"scratch-{n}"]["wall_s"]
    return {"example_seeds": example_seeds, "scored_on": score_seeds, "runs": runs,
            "incremental_over_scratch_wall": round(share, 3),
            "target_incremental_share": TARGET_INCREMENTAL_SHARE, "incremental_share_met": share <= TARGET_INCREMENTAL_SHARE}


def u96b_case(work: Path, device: str, feature_size: int, window: int, spacing: float, seed: int) -> dict:
    """The cost of a teach at CoralBay U96B's size (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from coralbay_bench.inputs import random_bundle

    base = random_bundle(work, len(bench.STRUCTURES), template=None, feature_size=feature_size,
                         window=(window,) * 3, spacing_mm=(spacing,) * 3)
    ct, labels = work / f"u{seed}.nii.gz", work / f"u{seed}-labels.nii.gz"
    subprocess.run([sys.executable, "-m", "coralbay", "phantom", "--seed", str(seed), "--output", str(ct), "--labels",
                    str(labels), "--spacing", f"{spacing:g}", "--size-mm", "240,200,140", "--lesions", "no"],
                   check=True, stdout=subprocess.DEVNULL)
    examples = work / "examples-u96b"
    bench.accept_reference(ct, labels, examples, bench.load_bundle(str(base)))
    home = work / "home-u96b"
    first = _teach(examples, str(base), work / "u96b-first", home, device, "--steps", "5")
    again = _teach(examples, str(base), work / "u96b-again", home, device, "--steps", "5")
    longer = _teach(examples, str(base), work / "u96b-longer", home, device, "--steps", "25")
    step = max(longer["wall_s"] - again["wall_s"], 0.0) / max(longer["steps"] - again["steps"], 1)
    return {"feature_size": feature_size, "window": window, "spacing_mm": spacing, "example_phantom_seed": seed,
            "random_weights": True, "runs": {"first (5 steps, empty store)": first, "again (5 steps, store)": again,
                                             "longer (25 steps, store)": longer},
            "crop_pool_s": round(first["wall_s"] - again["wall_s"], 2), "step_s": round(step, 3),
            f"projected_first_teach_{PROJECTED_STEPS}_steps_s": round(first["wall_s"] + (PROJECTED_STEPS - 5) * step, 1)}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{device} ({os.cpu_count()} CPUs visible)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default="demo,u96b", help="comma-separated: demo, u96b")
    parser.add_argument("--example-seeds", default=",".join(map(str, bench.TRAIN_SEEDS)))
    parser.add_argument("--score-seeds", default=",".join(map(str, bench.TEST_SEEDS)))
    parser.add_argument("--steps", type=int, help="--steps of the demo case's teaches (default: the teach's own)")
    parser.add_argument("--feature-size", type=int, default=48, help="u96b case: the encoder's feature size")
    parser.add_argument("--window", type=int, default=96, help="u96b case: the window edge in voxels")
    parser.add_argument("--spacing", type=float, default=1.5, help="u96b case: model and phantom spacing in mm")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for teach-gpu.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("teach_gpu: no CUDA GPU is visible to PyTorch, so there is nothing to measure here.", file=sys.stderr)
        return 1
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ("demo", "u96b")]
    if unknown:
        print(f"teach_gpu: unknown case {unknown[0]!r}; choose from demo, u96b.", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python benchmarks/interactive/teach_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "device": device_name(args.device)}
    begin = time.time()
    with tempfile.TemporaryDirectory(prefix="coralbay-teach-gpu-") as tmp:
        work = Path(tmp)
        if "demo" in cases:
            report["demo"] = demo_case(work, args.device, [int(s) for s in args.example_seeds.split(",")],
                                       [int(s) for s in args.score_seeds.split(",")], args.steps)
            print(json.dumps({"demo": {k: v for k, v in report["demo"].items() if k != "runs"}}), flush=True)
        if "u96b" in cases:
            report["u96b"] = u96b_case(work, args.device, args.feature_size, args.window, args.spacing, 10020)
            print(json.dumps({"u96b": {k: v for k, v in report["u96b"].items() if k != "runs"}}), flush=True)
    report["seconds"] = round(time.time() - begin, 1)
    (args.out / "teach-gpu.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"teach_gpu finished in {report['seconds']} s; wrote {args.out / 'teach-gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

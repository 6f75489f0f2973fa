"""Teach targets of issue #24 (docs/interactive.md, "Teach model"): phantoms and real CT.

Run from the repository root (the test set once, after tuning on the development set):
    PYTHONPATH=CoralBaySlicer:benchmarks OMP_NUM_THREADS=2 python benchmarks/interactive/teach_targets.py \
        --set dev|test3 --json benchmarks/interactive/teach-targets-dev.json
    PYTHONPATH=CoralBaySlicer:benchmarks OMP_NUM_THREADS=2 python benchmarks/interactive/teach_targets.py \
        --real-ct ../shared/data/realct_dev --json benchmarks/interactive/teach-realct.json

Phantoms: the reference structures of example scans 10010-10014 are written as accepted examples
(`teach.accept_reference`: the layout, scan id and record an interactive session writes on Accept;
i.e. a user who corrected every structure perfectly). Then, each `coralbay teach` timed as a whole
process (wall and CPU seconds, the 1-minute load average beside them), as `--runs` lists them:
  - scratch-N: from demo-phantom-seg (decoder blocks from it, output layer new) on N scans;
  - incremental-N: on N scans `--from` the model of N-1 scans (incremental-(N-1), or scratch-1):
    the loop a user runs (accept on one more scan, teach again).
Parts run side by side (`--runs` split over processes) are combined with `--merge`, which
computes the targets (mean and worst structure of scratch-5, the means along the loop, and the
incremental-5 / scratch-5 time ratios).
Every model segments the evaluation phantoms (development seeds, or the test seeds declared in
teach_test_set.json) and is scored with the review package's Dice against the reference.

Real CT (`--real-ct`): the clinicians' tumour contours of the five teach cases of
teach_test_set.json as accepted examples; one teach from scratch; Dice on the other cases.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.bundle.loader import load_bundle
from coralbay.device import select_device
from coralbay.inference.segment import segment_image
from coralbay.interactive.features import cache_key, encoder_digest, scan_digest
from coralbay.io.example_masks import write_accepted
from coralbay.review.metrics import dice_per_structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teach as bench  # noqa: E402  (the phantoms and accepted references of the first teach benchmark)

HERE = Path(__file__).resolve().parent
DECLARED = json.loads((HERE / "teach_test_set.json").read_text())


def teach(examples: Path, name: str, output: Path, *extra: str, base: str = bench.BASE) -> dict:
    """`coralbay teach`, timed as a process; its training record."""
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "coralbay", "teach", str(examples), "--model", base, "--name", name,
                    "--output", str(output), "--no-catalog", "--progress", "none", *extra],
                   check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    training = json.loads((output / "manifest.json").read_text())["metrics"]["training"]
    return {"name": name, "wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
            "load_1min": round(os.getloadavg()[0], 2), "options": " ".join(extra) or "defaults",
            **{k: training.get(k) for k in ("steps", "chosen_step", "stopped", "holdout_dice", "warnings",
                                            "loss_first_20_steps", "loss_last_20_steps")},
            "examples": [e["scan_id"] for e in training.get("examples", [])]}


def dice_table(model: Path, cases: list[tuple[str, sitk.Image, sitk.Image]], device: str = "cpu") -> dict:
    """Dice per structure (mean over cases, and per case) of a bundle on (name, image, labels) cases."""
    bundle = load_bundle(str(model))
    per_case = {}
    for name, image, labels in cases:
        result = segment_image(image, bundle, torch.device(device))
        per_case[name] = dice_per_structure(sitk.GetArrayViewFromImage(result.labels),
                                            sitk.GetArrayViewFromImage(labels), bundle.manifest.labels)
    names = [lab.name for lab in bundle.manifest.labels]
    mean = {n: round(float(np.mean([c[n] for c in per_case.values() if c[n] is not None])), 4) for n in names}
    return {"dice": mean, "mean_dice": round(float(np.mean(list(mean.values()))), 4),
            "worst_structure": min(mean, key=mean.get),
            "per_case": {case: {n: (round(d, 4) if d is not None else None) for n, d in c.items()}
                         for case, c in per_case.items()}}


def phantoms(args: argparse.Namespace, work: Path) -> dict:
    seeds = {"test": DECLARED["test_phantom_seeds"], "test2": DECLARED["second_test_phantom_seeds"],
             "test3": DECLARED["third_test_phantom_seeds"],
             "dev": DECLARED["development_phantom_seeds"]}[args.set]
    base = load_bundle(bench.BASE)
    scans = DECLARED["example_scan_seeds"]
    folders = {}
    for count in range(1, len(scans) + 1):  # examples of the first `count` scans
        folders[count] = work / f"examples-{count}"
        for seed in scans[:count]:
            bench.accept_reference(*bench.phantom(seed, work), folders[count], base)
    cases = []
    for seed in seeds:
        ct, labels = bench.phantom(seed, work)
        cases.append((f"phantom-{seed}", sitk.ReadImage(str(ct)), sitk.ReadImage(str(labels))))
    runs, scores = {}, {}
    budget = ("--minutes", str(args.minutes)) if args.minutes else ()
    for name in args.runs.split(","):
        count = int(name.rsplit("-", 1)[1])
        extra = ("--from", str(work / f"incremental-{count - 1}" if count > 2 else work / "scratch-1")) \
            if name.startswith("incremental") else ()
        runs[name] = teach(folders[count], name, work / name, *extra, *budget)
        scores[name] = dice_table(work / name, cases)
        print(f"{name}: mean Dice {scores[name]['mean_dice']} in {runs[name]['wall_seconds']} s "
              f"(load {runs[name]['load_1min']})", file=sys.stderr, flush=True)
    if args.with_base:
        scores[bench.BASE] = dice_table(Path(base.manifest.folder), cases)
    return {"set": args.set, "evaluated_phantoms": seeds, "example_scans": scans,
            "phantom_options": DECLARED["phantom_options"], "base": bench.BASE,
            "examples": "the reference labels of the example scans, written as accepted structures",
            "runs": runs, "scores": scores}


def targets(parts: list[dict]) -> dict:
    """The issue's targets from the runs of one or more parts (run side by side, same set)."""
    runs = {k: v for part in parts for k, v in part["runs"].items()}
    scores = {k: v for part in parts for k, v in part["scores"].items()}
    chain = [n for n in ("scratch-1", "incremental-2", "incremental-3", "incremental-5") if n in scores]
    means = [scores[n]["mean_dice"] for n in chain]
    ratio = runs["incremental-5"]["wall_seconds"] / runs["scratch-5"]["wall_seconds"]
    cpu_ratio = runs["incremental-5"]["cpu_seconds"] / runs["scratch-5"]["cpu_seconds"]
    best = scores["scratch-5"]
    return {**parts[0], "runs": runs, "scores": scores,
            "targets": {
            "scratch_5_mean_dice": best["mean_dice"], "scratch_5_min_structure_dice": min(best["dice"].values()),
            "scratch_5_minutes_wall": round(runs["scratch-5"]["wall_seconds"] / 60, 2),
            "scratch_5_minutes_cpu": round(runs["scratch-5"]["cpu_seconds"] / 60, 2),
            "mean_dice_from_1_2_3_5_scans": dict(zip(chain, means)),
            "rises_at_each_step": all(b > a for a, b in zip(means, means[1:])),
            "incremental_4_to_5_over_scratch_5_wall": round(ratio, 3),
            "incremental_4_to_5_over_scratch_5_cpu": round(cpu_ratio, 3),
            "incremental_5_mean_dice": scores["incremental-5"]["mean_dice"]}}


def real_ct(args: argparse.Namespace, work: Path) -> dict:
    root = Path(args.real_ct)
    base = load_bundle(args.base)
    digest = encoder_digest(base.network)
    manifest = base.manifest
    teach_cases = DECLARED["real_ct"]["teach_cases"]
    examples = work / "examples-realct"
    for case in teach_cases:
        image = sitk.ReadImage(str(root / case / "image.nii.gz"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / case / "label.nii.gz"))) == 1
        scan_id = cache_key(scan_digest(image), digest, manifest.preprocessing.to_dict(), manifest.inference)[:16]
        write_accepted(examples, scan_id, str(root / case / "image.nii.gz"), "tumour", 1, mask, image,
                       manifest.name, digest)
    run = teach(examples, "realct-5", work / "realct-5", "--device", args.device,
                *(("--minutes", str(args.minutes)) if args.minutes else ()), base=args.base)
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in teach_cases)
    cases = [(c, sitk.ReadImage(str(root / c / "image.nii.gz")), sitk.ReadImage(str(root / c / "label.nii.gz")))
             for c in others]
    score = dice_table(work / "realct-5", cases, str(select_device(args.device)))
    per_case = [c["tumour"] for c in score["per_case"].values()]
    return {"data": str(root), "base": args.base, "teach_cases": teach_cases, "evaluated_cases": others, "run": run,
            "tumour_dice_mean": round(float(np.mean(per_case)), 4), "tumour_dice_worst": round(min(per_case), 4),
            "tumour_dice_per_case": score["per_case"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("dev", "test", "test2", "test3"), default="dev",
                        help="dev: tuning phantoms; test: the first test set (run once at a6438e9); test2: the second "
                             "(run once at 420560b); test3: the third")
    parser.add_argument("--real-ct", metavar="FOLDER", help="teach on real CT (realct_dev) instead of phantoms")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--runs", default="scratch-1,incremental-2,incremental-3,incremental-4,incremental-5,scratch-5",
                        help="teach runs, in order: scratch-N (from demo-phantom-seg on N scans) or incremental-N "
                             "(--from the N-1 run: incremental-(N-1), or scratch-1)")
    parser.add_argument("--minutes", type=float, help="--minutes of every teach")
    parser.add_argument("--base", default=bench.BASE,
                        help=f"--real-ct: the model taught from (default {bench.BASE}; e.g. a bundle on the real CoralBay "
                             "encoder, docs/interactive.md)")
    parser.add_argument("--device", default="auto", help="--real-ct: the teach's and the scoring's device (default auto)")
    parser.add_argument("--with-base", action="store_true", help="also score demo-phantom-seg itself")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="PART",
                        help="combine parts run side by side into one JSON with the targets")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="coralbay-teach-targets-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CORALBAY_HOME"] = str(work / "home")
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        args.json.write_text(json.dumps({"parts": [p["command"] for p in parts], **targets(parts)}, indent=2) + "\n")
        return
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = real_ct(args, work) if args.real_ct else phantoms(args, work)
    command = " ".join(["python", "benchmarks/interactive/teach_targets.py", *sys.argv[1:]])
    args.json.write_text(json.dumps({"command": command, "commit": commit,
                                     "threads": os.environ.get("OMP_NUM_THREADS"), **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Teach-model benchmark (docs/interactive.md, "Teach model").

Run from the repository root:
    PYTHONPATH=CoralBaySlicer OMP_NUM_THREADS=2 python benchmarks/interactive/teach.py > benchmarks/interactive/teach.json

1. Five phantoms (seeds 10010-10014, held out from the demo encoder's training seeds 0-79), made with
   `coralbay phantom --spacing 2 --size-mm 240,200,140 --lesions no`.
2. Their 7 reference structures are written as accepted examples, in exactly the layout and with the
   record an interactive session writes on Accept (`coralbay.io.examples.write_accepted`, the scan id the
   session computes). Stated plainly: these masks are the reference labels, i.e. a user who corrected
   every structure to perfection; a real user's accepted masks are somewhat worse.
3. `coralbay teach EXAMPLES --model demo-phantom-seg --name ...` (the whole command timed, as a process).
4. Held-out phantoms 10000-10002 (the same settings) segmented with the taught bundle (`coralbay segment`)
   and with the starting bundle demo-phantom-seg (its decoder trained on 80 fully labelled phantoms: the
   ceiling, not a baseline to beat), each compared with the reference by `coralbay compare` (the review
   package's Dice).
"""

from __future__ import annotations

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

from coralbay.bundle.loader import load_bundle
from coralbay.interactive.features import cache_key, encoder_digest, scan_digest
from coralbay.io.example_masks import write_accepted
from coralbay.phantom import PHANTOM_LABELS

BASE = "demo-phantom-seg"
TRAIN_SEEDS = (10010, 10011, 10012, 10013, 10014)
TEST_SEEDS = (10000, 10001, 10002)
STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "vertebrae", "lung")


def coralbay(*args: str) -> tuple[float, float]:
    """Run a command; its wall-clock and CPU seconds (the CPU is shared, so wall time alone misleads)."""
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "coralbay", *args, "--progress", "none"], check=True,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - started, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def phantom(seed: int, folder: Path) -> tuple[Path, Path]:
    ct, labels = folder / f"p{seed}.nii.gz", folder / f"p{seed}-labels.nii.gz"
    if not ct.is_file():
        subprocess.run([sys.executable, "-m", "coralbay", "phantom", "--seed", str(seed), "--output", str(ct),
                        "--labels", str(labels), "--spacing", "2", "--size-mm", "240,200,140", "--lesions", "no"],
                       check=True, stdout=subprocess.DEVNULL)
    return ct, labels


def accept_reference(ct: Path, labels: Path, examples: Path, bundle) -> None:
    """The reference structures, kept as the session keeps accepted ones (same layout, scan id, record)."""
    image = sitk.ReadImage(str(ct))
    manifest = bundle.manifest
    digest = encoder_digest(bundle.network)
    scan_id = cache_key(scan_digest(image), digest, manifest.preprocessing.to_dict(), manifest.inference)[:16]
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    for name in STRUCTURES:
        value = PHANTOM_LABELS.by_name(name).value
        write_accepted(examples, scan_id, str(ct), name, value, values == value, image, manifest.name, digest)


def dice_of(model: str, seeds, folder: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    for seed in seeds:
        ct, labels = phantom(seed, folder)
        tag = Path(model).name
        pred = folder / f"pred-{tag}-{seed}.nii.gz"
        coralbay("segment", str(ct), "--model", model, "--output", str(pred))
        review = folder / f"review-{tag}-{seed}"
        coralbay("compare", str(pred), str(labels), "--output", str(review))
        metrics = json.loads((review / "metrics.json").read_text())
        for row in metrics["structures"]:
            if row.get("name") in found:
                found[row["name"]].append(row["dice"])
    return found


def main() -> None:
    work = Path(os.environ.get("WORK") or tempfile.mkdtemp(prefix="coralbay-teach-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CORALBAY_HOME"] = str(work / "home")  # the taught model goes into a private catalog
    bundle = load_bundle(BASE)
    examples = work / "examples"
    for seed in TRAIN_SEEDS:
        accept_reference(*phantom(seed, work), examples, bundle)
    taught = work / "taught"
    extra = os.environ.get("TEACH_ARGS", "").split()  # e.g. "--lr 0.01" to compare settings
    teach_s, teach_cpu_s = coralbay("teach", str(examples), "--model", BASE, "--name", "taught-phantoms",
                                    "--output", str(taught), *extra)
    manifest = json.loads((taught / "manifest.json").read_text())
    taught_dice = dice_of(str(taught), TEST_SEEDS, work)
    base_dice = dice_of(BASE, TEST_SEEDS, work)
    mean = lambda v: round(float(np.mean(v)), 4)  # noqa: E731
    print(json.dumps({
        "base": BASE, "train_phantoms": list(TRAIN_SEEDS), "test_phantoms": list(TEST_SEEDS),
        "teach_options": " ".join(extra) or "defaults", "teach_reproduce": manifest.get("reproduce"),
        "phantom_options": "--spacing 2 --size-mm 240,200,140 --lesions no",
        "examples": "the reference labels of the train phantoms, written as accepted structures",
        "teach_seconds": round(teach_s, 1), "teach_minutes": round(teach_s / 60, 2),
        "teach_cpu_seconds": round(teach_cpu_s, 1), "load_average_1min_at_end": os.getloadavg()[0],
        "teach_training": manifest["metrics"]["training"],
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "structures": [{"name": n, "taught_dice": mean(taught_dice[n]), "taught_dice_per_scan": taught_dice[n],
                        "base_dice": mean(base_dice[n])} for n in STRUCTURES],
        "taught_mean_dice": mean([mean(taught_dice[n]) for n in STRUCTURES]),
        "base_mean_dice": mean([mean(base_dice[n]) for n in STRUCTURES]),
    }, indent=2))


if __name__ == "__main__":
    main()

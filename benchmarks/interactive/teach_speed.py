"""Teach speed (issue #24): decoder steps per minute and the crop pool's cost, before/after, one command.

Run from the repository root:
    PYTHONPATH=CoralBaySlicer:benchmarks OMP_NUM_THREADS=2 python benchmarks/interactive/teach_speed.py \
        --json benchmarks/interactive/teach-speed.json

The teach's own settings (`training.teach`) on the accepted references of example scans
10010-10014 (as `teach_targets.py` writes them), demo-phantom-seg's encoder frozen, in one process:
  1. the crop pool built with an empty `CropStore` (every scan's crops through the encoder), then
     `--steps` steps in the standard (channels-first) layout: the step cost before this change;
  2. the same run again: the pool read from the store (what an incremental teach does for the
     scans it saw before), then the same steps in the channels-last layout;
  3. as 2, with the full-resolution decoder block trained too (the teach's default since then;
     1 and 2 keep it frozen, as the teach did before).
Both timed by wall clock and by this process's CPU seconds (the machine is shared: the CPU ratio
is the one to read); the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock

from coralbay.bundle.loader import load_bundle
from coralbay.training.augment import AugmentSettings
from coralbay.training.data import load_example_cases
from coralbay.training.segmentation import SegmentationSettings, train_segmentation
from coralbay.training.teach import CHECK_EVERY, HOLDOUT_CROPS, TEACH_LR

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teach as bench  # noqa: E402

CROPS_PER_SCAN = 4  # the teach default when this benchmark was written (kept fixed: it sets the pool's cost)
FULL_RESOLUTION_BLOCK = "decoder.decoder1"  # frozen by the teach before this change (rows 1 and 2)


def timed_run(cases, table, settings: SegmentationSettings, store: Path) -> dict:
    """One training run; the pool's seconds (until the first step) and the steps' per-minute rates."""
    network = load_bundle(bench.BASE).network
    network.decoder.out = UnetOutBlock(spatial_dims=3, in_channels=network.decoder.out.conv.conv.in_channels,
                                       out_channels=len(table) + 1)
    marks: list[tuple[float, float]] = []
    start = (time.perf_counter(), time.process_time())

    def progress(_fraction: float, message: str) -> None:
        if message.startswith("step "):
            marks.append((time.perf_counter(), time.process_time()))

    train_segmentation(network, cases, [], table, settings, torch.device("cpu"), progress=progress, crop_store=store)
    steps = len(marks) - 1  # the first mark ends step 1: rates over the steps after it
    wall, cpu = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
    return {"before_first_step_wall_s": round(marks[0][0] - start[0], 1),
            "before_first_step_cpu_s": round(marks[0][1] - start[1], 1),
            "steps_timed": steps, "steps_per_minute_wall": round(60 * steps / wall, 2),
            "steps_per_minute_cpu": round(60 * steps / cpu, 2), "load_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="coralbay-teach-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    base = load_bundle(bench.BASE)
    examples = work / "examples"
    for seed in bench.TRAIN_SEEDS:
        bench.accept_reference(*bench.phantom(seed, work), examples, base)
    cases, plan = load_example_cases(examples, base.manifest.preprocessing.to_dict(), base.manifest.labels)
    settings = SegmentationSettings(
        augment=AugmentSettings(window=base.manifest.inference.window_size), steps=args.steps, batch_size=2,
        lr=TEACH_LR, warmup_steps=min(20, args.steps), encoder_mode="frozen", feature_cache=CROPS_PER_SCAN,
        class_weights="none", checkpoint_every=args.steps + 1, balanced_pool=True, holdout_crops=HOLDOUT_CROPS,
        check_every=CHECK_EVERY, frozen_modules=(FULL_RESOLUTION_BLOCK,), probe_init=True)
    store = work / "crop-store"
    before = timed_run(cases, plan.table, replace(settings, channels_last=False), store)
    after = timed_run(cases, plan.table, settings, store)
    now = timed_run(cases, plan.table, replace(settings, frozen_modules=()), store)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": " ".join(["python", "benchmarks/interactive/teach_speed.py", *sys.argv[1:]]), "commit": commit,
        "threads": torch.get_num_threads(), "scans": len(cases), "crops_per_scan": CROPS_PER_SCAN,
        "before": {"what": "pool computed (empty store), channels-first steps", **before},
        "after": {"what": "pool read from the store, channels-last steps", **after},
        "teach_now": {"what": "as after, the full-resolution block trained too (the teach's default now)", **now},
        "steps_per_minute_ratio_cpu": round(after["steps_per_minute_cpu"] / before["steps_per_minute_cpu"], 2),
        "steps_per_minute_ratio_wall": round(after["steps_per_minute_wall"] / before["steps_per_minute_wall"], 2),
        "pool_ratio_cpu": round(after["before_first_step_cpu_s"] / before["before_first_step_cpu_s"], 3)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

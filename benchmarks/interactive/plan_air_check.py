"""plan_run's air check at CoralBay U96B's window (96^3, overlap 0.75) on a 1.5 mm clinical grid
(350 x 350 x 300 voxels = 525 x 525 x 450 mm): torch's max per strided window vs numpy's.

    PYTHONPATH=CoralBaySlicer OMP_NUM_THREADS=2 python benchmarks/interactive/plan_air_check.py
"""

from __future__ import annotations

import time

import torch

from coralbay.inference.sliding_window import WindowSettings, _pad_volume, plan_run, plan_windows


def main() -> None:
    volume = torch.rand(350, 350, 300) * (torch.rand(350, 350, 300) > 0.3)
    settings = WindowSettings((96, 96, 96), 0.75, skip_empty=True)
    started = time.perf_counter()
    run = plan_run(volume, settings)
    numpy_s = time.perf_counter() - started
    plan = plan_windows(volume.shape, settings.size, settings.overlap)
    padded = _pad_volume(volume, plan)   # the padding plan_run applies before its own check
    started = time.perf_counter()
    todo = [w for w in plan.slices if float(padded[w].max()) > settings.empty_below]
    torch_s = time.perf_counter() - started
    assert todo == run.todo, "the two checks chose different windows"
    print(f"{len(plan.slices)} windows: torch {torch_s:.3f} s, numpy {numpy_s:.3f} s (plan included), same windows")


if __name__ == "__main__":
    main()

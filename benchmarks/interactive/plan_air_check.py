"""plan_run's air check at CoralBay U96B's window (96^3, overlap 0.75) on a 1.5 mm clinical grid
(350 x 350 x 300 voxels = 525 x 525 x 450 mm): torch's max per strided window vs numpy's.

    PYTHONPATH=CoralBaySlicer OMP_NUM_THREADS=2 python benchmarks/interactive/plan_air_check.py
"""
import time, torch, numpy as np
from coralbay.inference.sliding_window import plan_windows, plan_run, WindowSettings, _pad_volume
v = torch.rand(350, 350, 300) * (torch.rand(350, 350, 300) > 0.3)
s = WindowSettings((96, 96, 96), 0.75, skip_empty=True)
t = time.perf_counter(); r = plan_run(v, s); numpy_s = time.perf_counter() - t
plan = plan_windows(v.shape, s.size, s.overlap); vol = _pad_volume(v, plan)
t = time.perf_counter(); todo = [w for w in plan.slices if float(vol[w].max()) > s.empty_below]; torch_s = time.perf_counter() - t
assert todo == r.todo
print(f"{len(plan.slices)} windows: torch {torch_s:.3f} s, numpy {numpy_s:.3f} s (plan included), same windows")

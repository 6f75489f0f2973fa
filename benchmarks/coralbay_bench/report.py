"""Markdown tables from `coralbay bench` JSON results: `python -m coralbay_bench.report [--scaling|--real] FILE.json ...`.

`--real` (issue 13): one table of bench results with CPU time and per-stage peaks, one of
`window_peak` results (files whose JSON has a top-level "forward_s").

Why: BENCHMARKS.md quotes the figures of the JSON files kept beside it; generating its tables
from them keeps the two from drifting apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def result_rows(name: str, result: dict) -> list[str]:
    """Two rows (monai, ours) of the main table for one result file."""
    rows = []
    inp = result["input"]
    what = (f"phantom {inp['synthetic']}³" if inp.get("synthetic") else Path(inp.get("path", "?")).name
            + (f" @{inp['resampled_to_mm']:g} mm" if inp.get("resampled_to_mm") else ""))
    setting = f"{result['model']['structures']} cls, ov {result['settings']['overlap']:g}"
    for path in ("monai", "ours"):
        m = result["paths"][path]["median"]
        s = m["stages_s"]
        rows.append(f"| {what} | {setting} | {path} | {_f(m['total_s'])} | {_f(s['load'], 2)} / "
                    f"{_f(s['preprocess'], 2)} / {_f(s['inference'])} / {_f(s['restore'], 2)} | "
                    f"{m['windows_evaluated']}/{m['windows_total']} | {_f(m['windows_per_s'], 3)} | "
                    f"{_f((m['achieved_flops_per_s'] or 0) / 1e9, 2)} | {_f(m['peak_rss_added_mb'], 0)} |")
    r = result["ratios"]
    rows.append(f"| | | **ours/monai** | **{_f(r['time'], 2)}** | inference {_f(r['inference_time'], 2)} | | | | "
                f"**{_f(r['memory'], 2)}** |")
    return rows


def agreement_line(name: str, result: dict) -> str:
    a = result["agreement"]
    judged = [s for s in a["structures"] if s["judged"]]
    dice = ", ".join(f"{s['name']} {s['dice']:.3f} ({s['baseline_ml']:.0f} mL)" for s in judged)
    return (f"- {name}: min Dice {_f(a['min_dice'], 3)} over {a['judged']} structures > 1 mL "
            f"({'meets' if a['holds'] else 'below'} {a['bound']}); identical voxels "
            f"{100 * a['voxels_equal_fraction']:.2f} %. {dice}")


def scaling_row(result: dict) -> str:
    """One row of the scaling table: size, overlap, windows, time and memory of both paths."""
    inp, m, o = result["input"], result["paths"]["monai"]["median"], result["paths"]["ours"]["median"]
    size = "×".join(str(v) for v in inp.get("size", []))
    return (f"| {size} | {result['settings']['overlap']:g} | {m['windows_evaluated']} / {o['windows_evaluated']} | "
            f"{_f(m['total_s'])} | {_f(o['total_s'])} | {_f(result['ratios']['time'], 2)} | "
            f"{_f(m['peak_rss_added_mb'], 0)} | {_f(o['peak_rss_added_mb'], 0)} | {_f(result['ratios']['memory'], 2)} |")


SCALING_HEADER = ("| volume | overlap | windows monai / ours | monai s | ours s | time ratio | "
                  "monai +MB | ours +MB | memory ratio |\n|---|---|---|---|---|---|---|---|---|")

HEADER = ("| input | head, overlap | path | total s | load / preprocess / inference / restore s | "
          "windows evaluated/total | windows/s | GFLOP/s | peak +RSS MB |\n"
          "|---|---|---|---|---|---|---|---|---|")


REAL_HEADER = ("| run | path | batch | windows run/placed | total s | CPU s | peak +MB | load / preprocess / "
               "inference / restore peak +MB | load avg before→after |\n|---|---|---|---|---|---|---|---|---|")
WINDOW_HEADER = ("| run | path | F | window | batch | parameters | weights MB | forward s | peak +MB |\n"
                 "|---|---|---|---|---|---|---|---|---|")


def real_rows(name: str, result: dict) -> list[str]:
    rows = []
    stages = ("load", "preprocess", "inference", "restore")
    machine = result["machine"]
    load = f"{(machine.get('load_average_before') or ['?'])[0]}→{(machine.get('load_average_after') or ['?'])[0]}"
    for path in ("monai", "ours"):
        m = result["paths"][path]["median"]
        run = result["paths"][path]["runs"][0]
        by = m.get("peak_rss_added_mb_by_stage") or {}
        real = run.get("windows_run_by_network")
        windows = f"{real if real is not None else m['windows_evaluated']}/{m['windows_total']}"
        rows.append(f"| {name} | {path} | {m['window_batch_size']} | {windows} | {_f(m['total_s'])} | "
                    f"{_f(m.get('cpu_s'))} | {_f(m['peak_rss_added_mb'], 0)} | "
                    f"{' / '.join(_f(by.get(s), 0) for s in stages)} | {load} |")
    r, a = result["ratios"], result["agreement"]
    by = r.get("memory_by_stage") or {}
    rows.append(f"| | **ours/monai** | | | **{_f(r['time'], 2)}** | **{_f(r.get('cpu_time'), 2)}** | "
                f"**{_f(r['memory'], 3)}** | {' / '.join(_f(by.get(s), 2) for s in stages)} | "
                f"min Dice {_f(a['min_dice'], 4)} |")
    return rows


def window_row(name: str, result: dict) -> str:
    return (f"| {name} | {result['path']} | {result['feature_size']} | {result['window']}³ | {result['batch']} | "
            f"{result['parameters'] / 1e6:.1f} M | {_f(result['weights_mb'], 0)} | {_f(result['forward_s'])} | "
            f"{_f(result['peak_rss_added_mb'], 0)} |")


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    scaling = "--scaling" in args
    real = "--real" in args
    files = [Path(p) for p in args if p not in ("--scaling", "--real")]
    results = {f.stem: json.loads(f.read_text(encoding="utf-8")) for f in files}
    if real:
        windows = {k: v for k, v in results.items() if "forward_s" in v}
        benches = {k: v for k, v in results.items() if "forward_s" not in v}
        if benches:
            print(REAL_HEADER)
            for name, result in benches.items():
                print("\n".join(real_rows(name, result)))
            print()
        if windows:
            print(WINDOW_HEADER)
            for name, result in windows.items():
                print(window_row(name, result))
        return 0
    if scaling:
        print(SCALING_HEADER)
        for result in results.values():
            print(scaling_row(result))
        return 0
    print(HEADER)
    for name, result in results.items():
        print("\n".join(result_rows(name, result)))
    print()
    for name, result in results.items():
        print(agreement_line(name, result))
    print()
    for name, result in results.items():
        machine = result["machine"]
        print(f"- {name}: load average before {machine.get('load_average_before')}, after "
              f"{machine.get('load_average_after')}; torch threads {machine.get('torch_threads')}; "
              f"wall {result['settings']['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run both paths in child processes, interleaved and repeated; aggregate, compare, write JSON.

Why interleaved: on a shared machine the load drifts; alternating monai/ours (and swapping which
goes first each repeat) spreads the drift over both, and the median of the repeats is reported
beside every single run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import SimpleITK as sitk

from coralbay.errors import CoralBayError
from coralbay_bench.agreement import structure_agreement
from coralbay_bench.machine import describe_machine, load_average, peak_bf16_flops

SCHEMA = "coralbay-bench/2"  # 2: per-stage peaks, per-path ratios, U96B targets (issue 13)
PATH_NAMES = ("monai", "ours")
TARGETS = {"time_ratio_max": 0.5, "memory_ratio_max": 0.35, "dice_min": 0.99}
STAGES = ("load", "preprocess", "inference", "restore")


@dataclass
class BenchSettings:
    input_path: Path
    model: Path
    overlap: float
    device: str = "cpu"
    precision: str = "fp32"
    window_batch: int | None = None
    spacing: Sequence[float] | None = None
    repeat: int = 1
    workdir: Path = Path(".")
    no_crop: bool = False
    restore: str = "linear"
    baseline_invert: str = "probabilities"
    max_windows: int | None = None  # diagnostic: network on the first K windows only (memory of the rest)


def _import_dirs() -> list[str]:
    """Where the worker finds the engine and this harness (both may come from a checkout)."""
    import coralbay

    return [str(Path(coralbay.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])]


def run_worker(path: str, settings: BenchSettings, tag: str) -> dict:
    """One path in a fresh Python process; its JSON result plus where its labels are."""
    labels = settings.workdir / f"{tag}-labels.nrrd"
    result = settings.workdir / f"{tag}-result.json"
    cmd = [sys.executable, "-m", "coralbay_bench.worker", "--path", path, "--input", str(settings.input_path),
           "--model", str(settings.model), "--labels", str(labels), "--result", str(result),
           "--overlap", str(settings.overlap), "--device", settings.device, "--precision", settings.precision]
    if settings.window_batch:
        cmd += ["--window-batch", str(settings.window_batch)]
    if settings.spacing:
        cmd += ["--spacing", *[str(s) for s in settings.spacing]]
    if settings.no_crop:
        cmd += ["--no-crop"]
    if settings.restore != "linear":
        cmd += ["--restore", settings.restore]
    if settings.baseline_invert != "probabilities":
        cmd += ["--baseline-invert", settings.baseline_invert]
    if settings.max_windows:
        cmd += ["--max-windows", str(settings.max_windows)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*_import_dirs(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not result.exists():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise CoralBayError(f"The {path} benchmark run failed: {lines[-1] if lines else 'no message'}")
    data = json.loads(result.read_text(encoding="utf-8"))
    data["labels_file"] = str(labels)
    return data


def _derived(run: dict) -> dict:
    """Per-run figures computed from the worker's raw ones."""
    inference = run["stages_s"]["inference"]
    windows = run["windows_evaluated"]
    out = {"windows_per_s": windows / inference if inference > 0 else None,
           "achieved_flops_per_s": run["flops_per_window"] * windows / inference if inference > 0 else None}
    return {**run, **out}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _stage_medians(runs: list[dict], key: str) -> dict[str, float] | None:
    if any(r.get(key) is None for r in runs):
        return None
    return {s: _median([r[key].get(s) for r in runs]) for s in STAGES if any(s in r[key] for r in runs)}


def summarise(runs: list[dict], peak_flops: float | None) -> dict:
    """Median over repeats of every timed or measured figure; counters from the first run."""
    first = runs[0]
    summary = {
        "stages_s": {s: round(_median([r["stages_s"][s] for r in runs]), 4) for s in STAGES},
        "total_s": round(_median([r["total_s"] for r in runs]), 4),
        "cpu_s": _median([r.get("cpu_s") for r in runs]),
        "peak_rss_added_mb": _median([r["peak_rss_added_mb"] for r in runs]),
        "peak_rss_added_mb_by_stage": _stage_medians(runs, "peak_rss_added_mb_by_stage"),
        "peak_gpu_added_mb_by_stage": _stage_medians(runs, "peak_gpu_added_mb_by_stage"),
        "base_rss_mb": _median([r["base_rss_mb"] for r in runs]),
        "peak_gpu_added_mb": _median([r["peak_gpu_added_mb"] for r in runs]),
        "peak_gpu_mb": _median([r["peak_gpu_mb"] for r in runs]),
        "windows_total": first["windows_total"], "windows_evaluated": first["windows_evaluated"],
        "window_batch_size": first["window_batch_size"], "model_grid_shape": first["model_grid_shape"],
        "flops_per_window": first["flops_per_window"], "torch_threads": first["torch_threads"],
        "windows_per_s": _median([r["windows_per_s"] for r in runs]),
        "achieved_flops_per_s": _median([r["achieved_flops_per_s"] for r in runs]),
    }
    summary["fraction_of_peak_bf16"] = (summary["achieved_flops_per_s"] / peak_flops
                                        if peak_flops and summary["achieved_flops_per_s"] else None)
    return summary


def _ratio(ours: float | None, base: float | None) -> float | None:
    return round(ours / base, 4) if ours is not None and base else None


def _unit(ratios: dict) -> dict:
    """The baseline's own ratios: 1 wherever ours has one."""
    return {k: (_unit(v) if isinstance(v, dict) else (None if v is None else 1.0)) for k, v in ratios.items()}


def run_benchmark(settings: BenchSettings, info: dict, log: Callable[[str], None] = lambda m: None) -> dict:
    """Both paths `settings.repeat` times, interleaved; the full result document."""
    from coralbay.bundle.manifest import read_manifest

    manifest = read_manifest(settings.model)
    device_name = None
    if settings.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    machine = describe_machine(device_name)
    machine["load_average_before"] = machine.pop("load_average")
    runs: dict[str, list[dict]] = {p: [] for p in PATH_NAMES}
    started = time.time()
    for r in range(settings.repeat):
        order = PATH_NAMES if r % 2 == 0 else PATH_NAMES[::-1]
        for path in order:
            log(f"repeat {r + 1}/{settings.repeat}: {path} path ...")
            run = _derived(run_worker(path, settings, f"{path}-{r + 1}"))
            run["load_average_after"] = load_average()
            runs[path].append(run)
            log(f"repeat {r + 1}/{settings.repeat}: {path} path {run['total_s']:.1f} s, "
                f"+{run['peak_rss_added_mb']:.0f} MB")
    machine["load_average_after"] = load_average()
    peak = peak_bf16_flops(device_name) if device_name else None
    summaries = {p: summarise(runs[p], peak) for p in PATH_NAMES}
    base, ours = summaries["monai"], summaries["ours"]
    ratios = {"time": _ratio(ours["total_s"], base["total_s"]),
              "cpu_time": _ratio(ours["cpu_s"], base["cpu_s"]),
              "inference_time": _ratio(ours["stages_s"]["inference"], base["stages_s"]["inference"]),
              "memory": _ratio(ours["peak_rss_added_mb"], base["peak_rss_added_mb"]),
              "gpu_memory": _ratio(ours["peak_gpu_added_mb"], base["peak_gpu_added_mb"]),
              "memory_by_stage": {s: _ratio((ours["peak_rss_added_mb_by_stage"] or {}).get(s),
                                            (base["peak_rss_added_mb_by_stage"] or {}).get(s)) for s in STAGES}}
    agreement = structure_agreement(sitk.ReadImage(runs["ours"][-1]["labels_file"]),
                                    sitk.ReadImage(runs["monai"][-1]["labels_file"]), manifest.labels)
    met = {"time": ratios["time"] is not None and ratios["time"] <= TARGETS["time_ratio_max"],
           "memory": ratios["memory"] is not None and ratios["memory"] <= TARGETS["memory_ratio_max"],
           "dice": agreement["holds"]}
    for path_runs in runs.values():
        for run in path_runs:
            run.pop("labels_file", None)
    arch = manifest.data["architecture"]
    return {
        "schema": SCHEMA, "command": info.get("command"), "machine": machine,
        "input": info.get("input", {}),
        "model": {"name": manifest.name, "path": str(settings.model), "feature_size": arch["feature_size"],
                  "project_dims": arch.get("project_dims"), "parameters": runs["ours"][0].get("parameters"),
                  "structures": len(manifest.labels), "window_size": manifest.inference["window_size"],
                  "spacing_mm": list(settings.spacing or manifest.preprocessing["spacing_mm"]),
                  "intensity_window_hu": manifest.preprocessing["intensity_window_hu"],
                  "random_weights": bool(info.get("random_weights"))},
        "settings": {"overlap": settings.overlap, "device": settings.device, "precision": settings.precision,
                     "body_crop": not settings.no_crop, "restore": settings.restore,
                     "baseline_invert": settings.baseline_invert, "max_windows": settings.max_windows,
                     "window_batch": {p: summaries[p]["window_batch_size"] for p in PATH_NAMES},
                     "repeat": settings.repeat, "wall_s": round(time.time() - started, 1)},
        "paths": {p: {"median": summaries[p], "ratios": ratios if p == "ours" else _unit(ratios), "runs": runs[p]}
                  for p in PATH_NAMES},
        "ratios": ratios, "agreement": agreement,
        "targets": {**TARGETS, "met": met},
    }

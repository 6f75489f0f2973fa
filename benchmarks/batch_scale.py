"""Scale evidence for `coralbay batch` (docs/batch.md): not a test, a measurement to rerun.

1. Throughput of the local pool with 1 and 2 workers over the same N phantoms (the demo
   segmentation bundle, --compare), each run a real `coralbay batch` command; the ratio is the
   figure to read (absolute seconds depend on the machine and its load, recorded before and after
   each run). Then pairs over the first few cases, each switching one setting against the
   run just before it: the look-ahead (CORALBAY_BATCH_LOOKAHEAD=1 or 0), 1 torch thread for
   1 worker, and 2 torch threads for each of 2 workers (what the cores/workers default avoids).
2. Per-case time split (read, preprocess, network, restore, write, compare) and bytes per case,
   from which docs/batch.md estimates a 10,000-scan cohort on N workers.
3. The Dask scheduler's memory as a cohort of 1,000 tiny synthetic cases goes through
   `run_dask` on a LocalCluster (each case: a prepare task and a case task, as real cases; the scan
   does not exist, so each case fails at once and only the bookkeeping is measured), sampled
   every 100 cases; against the same 1,000 cases submitted all at once, in the same command.

Usage: PYTHONPATH=CoralBaySlicer python benchmarks/batch_scale.py --out /tmp/batch-bench [--cases 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "demo-phantom-seg"


def make_cohort(folder: Path, count: int, spacing: float) -> Path:
    from coralbay.phantom import generate_phantom, write_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        ct, ref = folder / f"p{seed:03d}.nii.gz", folder / f"p{seed:03d}_labels.nii.gz"
        if not ct.exists():
            write_phantom(generate_phantom(seed, spacing=spacing), ct, ref)
    return write_cohort_csv(folder, "cohort.csv", count)


# (name, workers, environment, cohort): the scale runs over the whole cohort; then pairs that
# switch one setting, over its first few cases, run back to back so the load drifts little
# between the two of a pair. The look-ahead is set explicitly (it was on by default when
# benchmarks/batch/ was measured, and is off by default since, after that measurement).
ON, OFF = {"CORALBAY_BATCH_LOOKAHEAD": "1"}, {"CORALBAY_BATCH_LOOKAHEAD": "0"}
ONE, TWO = {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}
RUNS = (
    ("1 worker", 1, ON, "all"),                         # torch threads: cores / workers (the pool's default)
    ("2 workers", 2, ON, "all"),
    ("1 worker [first]", 1, ON, "first"),
    ("1 worker, no look-ahead [first]", 1, OFF, "first"),
    ("1 worker x 1 torch thread [first]", 1, {**ON, **ONE}, "first"),
    ("2 workers [first]", 2, ON, "first"),
    ("2 workers x 2 torch threads [first]", 2, {**ON, **TWO}, "first"),
    # 1 torch thread per worker for both counts: the ratio at equal threads per worker, and the
    # look-ahead where the network leaves the second core to the preparing thread, twice each way.
    ("1 worker x 1 torch thread", 1, {**ON, **ONE}, "all"),
    ("1 worker x 1 torch thread [first]", 1, {**ON, **ONE}, "first"),
    ("1 worker x 1 torch thread, no look-ahead [first]", 1, {**OFF, **ONE}, "first"),
    ("1 worker x 1 torch thread [first, again]", 1, {**ON, **ONE}, "first"),
    ("1 worker x 1 torch thread, no look-ahead [first, again]", 1, {**OFF, **ONE}, "first"),
)


def write_cohort_csv(folder: Path, name: str, count: int) -> Path:
    lines = ["id,image,reference"] + [f"p{seed:03d},p{seed:03d}.nii.gz,p{seed:03d}_labels.nii.gz" for seed in range(count)]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def timed_batch(cohort: Path, output: Path, workers: int, env: dict[str, str]) -> dict:
    command = [sys.executable, "-m", "coralbay", "batch", str(cohort), "-m", MODEL, "-o", str(output),
               "--compare", "--workers", str(workers), "--progress", "none"]
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CORALBAY_BATCH_LOOKAHEAD")}
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**environment, **env})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"batch failed: {result.stderr.strip()}")
    summary = json.loads((output / "summary.json").read_text())
    return {"workers": workers, "environment": env, "command": " ".join(command[1:]), "wall_s": round(wall, 2),
            "cases": summary["counts"]["done"], "cases_per_min": round(60 * summary["counts"]["done"] / wall, 2),
            "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "per_case": per_case(output)}


def per_case(output: Path) -> dict:
    records = [json.loads(p.read_text()) for p in sorted(output.glob("cases/*/case.json"))]
    keys = ("read_s", "preprocess_s", "inference_s", "restore_s", "write_s", "compare_s", "total_s", "cpu_s")
    medians = {k: statistics.median(r["timings"][k] for r in records if k in r["timings"]) for k in keys}
    case_bytes = [sum(f.stat().st_size for f in (output / "cases" / r["id"]).rglob("*") if f.is_file()) for r in records]
    input_bytes = [os.path.getsize(r["image"]) for r in records]
    return {"median_s": {k: round(v, 3) for k, v in medians.items()},
            "prepared_ahead": sum(bool(r["worker"].get("prepared_ahead")) for r in records),
            "median_output_bytes": int(statistics.median(case_bytes)),
            "median_input_bytes": int(statistics.median(input_bytes)),
            "model_load_s": [r["timings"]["model_load_s"] for r in records if "model_load_s" in r["timings"]]}


def scheduler_memory(cases: int, tmp: Path, every: int) -> dict:
    """Scheduler RSS (after a garbage collection there) every `every` finished cases, for the
    bounded submission run_dask uses and, as the baseline, the whole cohort submitted at once;
    each on a fresh LocalCluster. Slopes are given for the first and second half of the cohort."""
    from coralbay.batch.cohort import Case
    from coralbay.batch.dask_backend import open_client, run_dask
    from coralbay.batch.runner import BatchOptions, make_job

    job = make_job(BatchOptions(cohort="", model=MODEL, output=str(tmp / "synthetic-out")))
    synthetic = [Case(f"s{i:05d}", str(tmp / f"synthetic-{i:05d}.nii.gz")) for i in range(cases)]

    def rss_and_tasks(dask_scheduler=None):
        import gc

        import psutil

        gc.collect()
        return psutil.Process().memory_info().rss, len(dask_scheduler.tasks)

    def slope(samples: list[dict]) -> float:
        if len(samples) < 2:
            return 0.0
        fit = statistics.linear_regression([s["cases_done"] for s in samples], [s["scheduler_rss_mb"] for s in samples])
        return round(fit.slope * 1024, 2)

    result = {}
    for label, in_flight in (("bounded (default)", None), ("all at once", cases)):
        with open_client("local:2", max_attempts=3) as client:
            rss, tasks = client.run_on_scheduler(rss_and_tasks)
            samples = [{"cases_done": 0, "scheduler_rss_mb": round(rss / 2**20, 1), "tasks_held": tasks}]
            done = [0]

            def on_record(record: dict) -> None:
                done[0] += 1
                if done[0] % every == 0:
                    rss, tasks = client.run_on_scheduler(rss_and_tasks)
                    samples.append({"cases_done": done[0], "scheduler_rss_mb": round(rss / 2**20, 1),
                                    "tasks_held": tasks})

            start = time.perf_counter()
            run_dask(client, synthetic, job, on_record, in_flight=in_flight)
            half = len(samples) // 2
            result[label] = {"samples": samples, "kb_per_case_first_half": slope(samples[1:half + 1]),
                             "kb_per_case_second_half": slope(samples[half:]),
                             "max_tasks_held": max(s["tasks_held"] for s in samples),
                             "seconds": round(time.perf_counter() - start, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--pair-cases", type=int, default=6, help="cases of each run that switches a default off")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm")
    parser.add_argument("--synthetic", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--only-scheduler", action="store_true", help="skip the phantom runs")
    parser.add_argument("--runs", help="comma-separated indices into RUNS (default: all), e.g. to rerun some")
    parser.add_argument("--skip-scheduler", action="store_true", help="skip the scheduler's memory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}}
    if args.only_scheduler:
        report["scheduler_memory"] = scheduler_memory(args.synthetic, args.out, args.sample_every)
        report["machine"]["load_avg_after"] = os.getloadavg()
        print(json.dumps(report, indent=1))
        return
    cohorts = {"all": make_cohort(args.out / "cohort", args.cases, args.spacing),
               "first": write_cohort_csv(args.out / "cohort", "first.csv", min(args.pair_cases, args.cases))}
    runs = []
    chosen = [int(i) for i in args.runs.split(",")] if args.runs else range(len(RUNS))
    for index in chosen:
        name, workers, env, which = RUNS[index]
        output = args.out / f"run{index}"
        if output.exists():
            subprocess.run(["rm", "-rf", str(output)], check=True)
        runs.append({"name": name, **timed_batch(cohorts[which], output, workers, env)})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "per_case"}), flush=True)
        print("  ", json.dumps(runs[-1]["per_case"]["median_s"]), flush=True)
    report["throughput"] = runs
    by_name = {run["name"]: run for run in runs}

    def ratio(a: str, b: str) -> float | None:
        if a not in by_name or b not in by_name:
            return None
        return round(by_name[a]["cases_per_min"] / by_name[b]["cases_per_min"], 3)

    report["ratio_2_to_1"] = ratio("2 workers", "1 worker")
    report["ratio_2_to_1_at_1_thread_per_worker"] = ratio("2 workers", "1 worker x 1 torch thread")
    report["pairs"] = {"look-ahead on / off, 1 worker": ratio("1 worker [first]", "1 worker, no look-ahead [first]"),
                       "look-ahead on / off, 1 worker x 1 thread": ratio("1 worker x 1 torch thread [first]",
                                                                         "1 worker x 1 torch thread, no look-ahead [first]"),
                       "look-ahead on / off, 1 worker x 1 thread, again": ratio(
                           "1 worker x 1 torch thread [first, again]", "1 worker x 1 torch thread, no look-ahead [first, again]"),
                       "1 worker: 2 torch threads (default) / 1": ratio("1 worker [first]", "1 worker x 1 torch thread [first]"),
                       "2 workers: 1 torch thread each (default) / 2": ratio("2 workers [first]", "2 workers x 2 torch threads [first]")}
    report["per_case"] = {name: run["per_case"] for name, run in by_name.items() if name in ("1 worker", "2 workers")}
    if not args.skip_scheduler:
        report["scheduler_memory"] = scheduler_memory(args.synthetic, args.out, args.sample_every)
    report["machine"]["load_avg_after"] = os.getloadavg()
    (args.out / "batch_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("scheduler_memory", "throughput")}, indent=1))
    for label, data in report.get("scheduler_memory", {}).items():
        print(label, data["kb_per_case_first_half"], data["kb_per_case_second_half"], "KB/case (halves);", "max tasks held", data["max_tasks_held"],
              [s["scheduler_rss_mb"] for s in data["samples"]])


if __name__ == "__main__":
    main()

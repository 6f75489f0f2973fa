"""The cohort's tables and pictures: results.csv (+ results.parquet), summary.json, metrics.png.

One row per case in cohort order: status (done, skipped = done by an earlier run and still valid,
failed, pending = not reached before an interruption), the one-sentence error, the DICOM series
read from a series or study folder (`series` number, `series_uid`), timings, volumes
per structure (`volume_ml:<name>`) and, with --compare, metrics per structure
(`dice:<name>`, `hd95_mm:<name>`, ...). Floats are written with repr, so the CSV holds exactly
the values of each case's review/metrics.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from coralbay.batch.engine import atomic_file, write_text_atomic

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
SUMMARY_JSON = "summary.json"
PLOT_PNG = "metrics.png"
FIXED_COLUMNS = ("id", "status", "error", "warnings", "image", "series", "series_uid", "reference", "attempts",
                 "worker_host", "worker_pid",
                 "model_load_s", "read_s", "segment_s", "preprocess_s", "inference_s", "restore_s",
                 "write_s", "classify_s", "compare_s", "total_s", "cpu_s",
                 "classification", "confidence")
TIMING_COLUMNS = tuple(c for c in FIXED_COLUMNS if c.endswith("_s"))
METRIC_KEYS = ("dice", "hd95_mm", "assd_mm", "surface_dice", "volume_difference_percent")


def row_of(record: dict) -> dict[str, Any]:
    worker = record.get("worker") or {}
    timings = record.get("timings") or {}
    classification = record.get("classification") or {}
    row: dict[str, Any] = {"id": record["id"], "status": record["status"], "error": record.get("error"),
                           "warnings": " | ".join(record.get("warnings") or []) or None,
                           "image": record.get("image"), "series": record.get("series"),
                           "series_uid": record.get("series_uid"), "reference": record.get("reference"),
                           "attempts": record.get("attempts"), "worker_host": worker.get("host"),
                           "worker_pid": worker.get("pid"),
                           "classification": classification.get("prediction"),
                           "confidence": classification.get("confidence")}
    for key in TIMING_COLUMNS:
        row[key] = timings.get(key)
    for name, volume in (record.get("volumes_ml") or {}).items():
        row[f"volume_ml:{name}"] = volume
    for name, values in (record.get("metrics") or {}).items():
        for key in METRIC_KEYS:
            row[f"{key}:{name}"] = values.get(key)
    return row


def _columns(rows: list[dict]) -> list[str]:
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in FIXED_COLUMNS and k not in extra]
    volumes = [c for c in extra if c.startswith("volume_ml:")]
    return list(FIXED_COLUMNS) + volumes + [c for c in extra if c not in volumes]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_results(folder: Path, records: list[dict], run_info: dict) -> dict:
    """Write results.csv, results.parquet (when pyarrow is importable), summary.json, metrics.png."""
    rows = [row_of(r) for r in records]
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    write_text_atomic(folder / RESULTS_CSV, buffer.getvalue())
    _write_parquet(folder / RESULTS_PARQUET, rows, columns)
    summary = summarize(records, run_info)
    write_text_atomic(folder / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _write_plot(folder / PLOT_PNG, records)
    return summary


def _write_parquet(path: Path, rows: list[dict], columns: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return  # Parquet is an extra; the CSV holds the same table
    text_columns = {"id", "status", "error", "warnings", "image", "series", "series_uid", "reference", "worker_host",
                    "classification"}
    arrays = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        kind = pa.string() if column in text_columns else (pa.int64() if column in ("attempts", "worker_pid")
                                                            else pa.float64())
        arrays[column] = pa.array(values, type=kind)
    with atomic_file(path) as tmp:
        pq.write_table(pa.table(arrays), tmp)


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def _per_structure(records: list[dict], field: str, key: str | None) -> dict[str, dict]:
    values: dict[str, list[float]] = {}
    for record in records:
        for name, value in (record.get(field) or {}).items():
            values.setdefault(name, []).append(value.get(key) if key else value)
    return {name: s for name, v in values.items() if (s := _stats(v)) is not None}


def summarize(records: list[dict], run_info: dict) -> dict:
    ok = [r for r in records if r["status"] in ("done", "skipped")]
    counts = {status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed", "pending")}
    return {**run_info, "cases": len(records), "counts": counts,
            "failed": [{"id": r["id"], "error": r.get("error")} for r in records if r["status"] == "failed"],
            "warnings": [{"id": r["id"], "warnings": r["warnings"]} for r in records if r.get("warnings")],
            "volume_ml": _per_structure(ok, "volumes_ml", None),
            "dice": _per_structure(ok, "metrics", "dice"),
            "hd95_mm": _per_structure(ok, "metrics", "hd95_mm"),
            "seconds_per_case": _stats([(r.get("timings") or {}).get("total_s") for r in records
                                        if r["status"] == "done"])}


def _write_plot(path: Path, records: list[dict]) -> None:
    """Box plots per structure: Dice and HD95 with --compare, else the volumes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] in ("done", "skipped")]
    panels = []
    for field, key, title in (("metrics", "dice", "Dice"), ("metrics", "hd95_mm", "HD95 (mm)")):
        data = _values_by_structure(ok, field, key)
        if data:
            panels.append((title, data))
    if not panels:
        data = _values_by_structure(ok, "volumes_ml", None)
        panels = [("Volume (ml)", data)] if data else []
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (title, data) in zip(axes[0], panels):
        axis.boxplot(list(data.values()))  # labels set apart: the keyword's name changed in matplotlib 3.9
        axis.set_xticks(range(1, len(data) + 1), list(data.keys()))
        axis.set_title(f"{title}, {len(ok)} cases")
        axis.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _values_by_structure(records: list[dict], field: str, key: str | None) -> dict[str, list[float]]:
    data: dict[str, list[float]] = {}
    for record in records:
        for name, value in (record.get(field) or {}).items():
            v = value.get(key) if key else value
            if v is not None and math.isfinite(v):
                data.setdefault(name, []).append(v)
    return data

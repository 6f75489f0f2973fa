"""metrics.json and metrics.csv of a comparison.

JSON holds null (never NaN) for undefined values; CSV leaves those cells empty. Both list the
structures in the order of their prediction label values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

STRUCTURE_FIELDS = ("name", "prediction_value", "reference_value", "dice", "iou", "precision", "sensitivity",
                    "prediction_volume_ml", "reference_volume_ml", "volume_difference_percent",
                    "hausdorff_mm", "hd95_mm", "assd_mm", "surface_dice", "tp_voxels", "fp_voxels", "fn_voxels")


def _clean(value):
    """Floats that are not finite become None, so JSON never holds NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def metrics_json_text(metrics: dict) -> str:
    return json.dumps(_clean(metrics), indent=2, allow_nan=False) + "\n"


def metrics_csv_text(metrics: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STRUCTURE_FIELDS)
    for structure in metrics["structures"]:
        writer.writerow(["" if structure.get(f) is None else structure[f] for f in STRUCTURE_FIELDS])
    return buffer.getvalue()


def write_reports(metrics: dict, folder: Path) -> None:
    (folder / "metrics.json").write_text(metrics_json_text(metrics), encoding="utf-8")
    (folder / "metrics.csv").write_text(metrics_csv_text(metrics), encoding="utf-8")

"""Read the engine's output files into plain values the Slicer module puts into the scene.

The engine writes label maps with a sidecar label table, `metrics.json` from `compare`, and a JSON
report from `classify`. Reading and checking them here (not in the module file) keeps the Slicer glue
thin and lets the tests check them against real engine outputs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from coralbay.atomic import write_text_atomic
from coralbay.io.labels import LabelTable, find_label_table, label_table_path_for

from CoralBaySlicerLib.coordinates import Point, lps_to_ras

PathLike = Union[str, os.PathLike]

# Metrics shown first in the table, in this order; any other numeric field of a structure follows.
METRIC_COLUMNS = ("dice", "iou", "precision", "sensitivity", "hd95_mm", "hausdorff_mm", "assd_mm",
                  "surface_dice", "prediction_volume_ml", "reference_volume_ml", "volume_difference_percent")

# Names of the categorical difference map's labels (coralbay compare): shown, except agreement.
DIFFERENCE_HIDDEN = ("agreement",)


class ResultError(RuntimeError):
    """An engine output is missing or not what the module expects (one sentence)."""


@dataclass(frozen=True)
class SegmentInfo:
    """What a Slicer segment needs from one label: value, name, colour in 0..1, terminology entry."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str | None


def read_json(path: PathLike, what: str) -> Any:
    """A JSON file the engine wrote, with one clear sentence if it is missing or broken."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"The engine reported success but wrote no {what} ({p.name}).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"The {what} {p.name} is not readable JSON ({exc}).") from None


def label_map_segments(label_map: PathLike) -> list[SegmentInfo]:
    """The segments of an engine label map, from its sidecar label table (names, colours, codes)."""
    table = find_label_table(label_map)
    if table is None:
        raise ResultError(f"The label map {Path(label_map).name} has no label table beside it.")
    return segments_from_table(table)


def write_label_table(table: LabelTable, label_map: PathLike) -> Path:
    """Write `table` as the sidecar label table of `label_map` (where the engine looks for it)."""
    target = label_table_path_for(label_map)
    write_text_atomic(target, json.dumps(table.to_dict(), indent=2))
    return target


def segments_from_table(table: LabelTable) -> list[SegmentInfo]:
    return [SegmentInfo(lab.value, lab.name, tuple(c / 255.0 for c in lab.color),
                        lab.terminology.slicer_string() if lab.terminology else None)
            for lab in table]


def output_path(result: dict | None, key: str, default: PathLike) -> Path:
    """An output path from the engine's "result" event ("outputs": {key: path}), else the default.

    The module always tells the engine where to write, so the default is what it asked for; the
    result event, when it names the file, is preferred.
    """
    outputs = (result or {}).get("outputs")
    if isinstance(outputs, dict) and isinstance(outputs.get(key), str):
        return Path(outputs[key])
    return Path(default)


# -- compare ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricsTable:
    """Per-structure metrics: `columns[0]` is "name" (text), every other column is a number
    (NaN where the engine gave none, e.g. a distance when a structure is empty on one side)."""

    columns: list[str]
    rows: list[list[Any]]
    worst_error_ras: Point | None


def read_metrics(path: PathLike) -> MetricsTable:
    """`metrics.json` of `coralbay compare` as table columns and rows, plus the worst error in RAS."""
    data = read_json(path, "metrics file")
    structures = data.get("structures") if isinstance(data, dict) else None
    if not isinstance(structures, list):
        raise ResultError(f"The metrics file {Path(path).name} has no list of structures.")
    present = [k for k in METRIC_COLUMNS if any(isinstance(s, dict) and k in s for s in structures)]
    extra: list[str] = []
    for s in structures:
        if isinstance(s, dict):
            extra += [k for k, v in s.items() if k not in present and k not in extra and k != "name"
                      and _is_number(v)]
    columns = ["name", *present, *extra]
    rows = [[str(s.get("name", "")), *(_number(s.get(c)) for c in columns[1:])]
            for s in structures if isinstance(s, dict)]
    worst = data.get("worst_error_lps")
    worst_ras = None
    if isinstance(worst, (list, tuple)) and len(worst) == 3 and all(_is_number(v) for v in worst):
        worst_ras = lps_to_ras(worst)
    return MetricsTable(columns, rows, worst_ras)


# -- classify ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Classification:
    predicted: str | None
    rows: list[tuple[str, float]]  # (class name, probability), most likely first

    def summary(self) -> str:
        if not self.rows:
            return "No class scores were reported."
        name, p = self.rows[0]
        return f"{self.predicted or name} (probability {p:.2f})"


def read_classification(path: PathLike) -> Classification:
    """A `coralbay classify` report: the predicted class and every class's probability.

    Accepts the probabilities as {"class": p, ...} or as a list of {"name"/"class"/"label": ...,
    "probability"/"score": p} objects, under "probabilities", "classes" or "scores".
    """
    data = read_json(path, "classification report")
    if not isinstance(data, dict):
        raise ResultError(f"The classification report {Path(path).name} is not a JSON object.")
    scores = next((data[k] for k in ("probabilities", "classes", "scores") if k in data), None)
    rows: list[tuple[str, float]] = []
    if isinstance(scores, dict):
        rows = [(str(k), float(v)) for k, v in scores.items() if _is_number(v)]
    elif isinstance(scores, list):
        for item in scores:
            if not isinstance(item, dict):
                continue
            name = next((item[k] for k in ("name", "class", "label") if k in item), None)
            value = next((item[k] for k in ("probability", "score") if k in item), None)
            if name is not None and _is_number(value):
                rows.append((str(name), float(value)))
    if not rows:
        raise ResultError(f"The classification report {Path(path).name} lists no class probabilities.")
    rows.sort(key=lambda r: -r[1])
    predicted = next((data[k] for k in ("predicted", "prediction", "predicted_class", "class") if
                      isinstance(data.get(k), str)), None)
    return Classification(predicted, rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan

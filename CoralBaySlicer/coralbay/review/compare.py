"""Compare a predicted label map with a reference (ground truth) and write the review folder.

Steps: read both (label maps, `.seg.nrrd` or DICOM SEG) -> bring the reference onto the
prediction's grid -> pair labels -> per-structure metrics -> difference maps -> report. Everything
is computed in memory first and the output folder is written as a whole, so a failure never
leaves a partial review behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import atomic_dir, check_folder_output_name
from coralbay.errors import InputError, UsageError
from coralbay.grid.resample import bring_onto_grid
from coralbay.io.label_maps import LabelInput, read_labels
from coralbay.io.volumes import write_image_verified
from coralbay.review import diffmaps
from coralbay.review.matching import Matching, load_mapping, match_labels
from coralbay.review.metrics import overlap_metrics
from coralbay.review.report import metrics_json_text, write_reports
from coralbay.review.surface import surface_metrics

# Below this fraction of the prediction's field of view, a reference cannot judge the prediction:
# everything predicted outside it counts as false positive (a 1.5 % reference gave Dice 0.036).
MIN_REFERENCE_COVERAGE = 0.5
DEFAULT_TOLERANCE_MM = 3.0  # as TotalSegmentator's evaluation (normalized surface distance at 3 mm)
OUTPUT_FILES = ("metrics.json", "metrics.csv", "difference.nii.gz", "difference.labels.json",
                "surface_distance.nii.gz", "overview.png")
STAGES = {"read": 2.0, "resample": 1.0, "metrics": 4.0, "maps": 2.0, "report": 1.0}

ProgressCallback = Callable[[str, float, str], None]


def _check_output_dir(output_dir: Path) -> None:
    """Refuse to replace a folder that is not an earlier review (replacing deletes its content)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"The output {output_dir} is a file; give a folder for the review.")
    check_folder_output_name(output_dir, "a review (metrics, difference maps, overview)")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / "metrics.json").is_file():
        raise UsageError(f"The output folder {output_dir} exists and is not an earlier review; give a new folder.")
    parent = output_dir.parent if str(output_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"The folder {parent} for the review does not exist.")


def _refuse_empty(label_input: LabelInput, role: str) -> None:
    if not label_input.voxel_counts:
        raise InputError(f"The {role} {label_input.path} contains no labelled voxels; there is nothing to compare.")


def _structure_metrics(prediction: np.ndarray, reference: np.ndarray, matching: Matching,
                       spacing_zyx: tuple[float, float, float], voxel_ml: float, tolerance_mm: float,
                       progress: ProgressCallback) -> list[dict]:
    pred_boxes = diffmaps.bounding_boxes(prediction)
    ref_boxes = diffmaps.bounding_boxes(reference)
    rows = []
    for index, pair in enumerate(matching.pairs):
        box = diffmaps.union_box([pred_boxes.get(pair.prediction_value), ref_boxes.get(pair.reference_value)],
                                 prediction.shape, margin=1)
        pred_mask = prediction[box] == pair.prediction_value
        ref_mask = reference[box] == pair.reference_value
        row = {"name": pair.name, "prediction_value": pair.prediction_value,
               "reference_value": pair.reference_value}
        row.update(overlap_metrics(pred_mask, ref_mask, voxel_ml))
        row.update(surface_metrics(pred_mask, ref_mask, spacing_zyx, tolerance_mm))
        rows.append(row)
        progress("metrics", (index + 1) / max(1, len(matching.pairs)), pair.name)
    return rows


def compare_label_maps(pred_path: str | os.PathLike, ref_path: str | os.PathLike,
                       output_dir: str | os.PathLike, image_path: str | os.PathLike | None = None,
                       mapping_path: str | os.PathLike | None = None,
                       tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                       dicom_series: str | os.PathLike | None = None,
                       progress: ProgressCallback | None = None, partial_reference: bool = False,
                       series: str | None = None) -> dict:
    """Compare `pred_path` with `ref_path`, write the review folder, return the metrics.json content.

    `dicom_series` gives the source series of DICOM SEG inputs (when `image_path` is a DICOM
    folder and no series is given, that folder is used); `series` chooses the series when that
    folder is a study; `progress(stage, fraction, message)`.
    A reference covering less than MIN_REFERENCE_COVERAGE of the prediction's field of view is
    refused unless `partial_reference` (the user knows it is partial).
    """
    report = progress or (lambda stage, fraction, message="": None)
    output = Path(output_dir)
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise UsageError(f"The surface Dice tolerance must be a finite number of mm >= 0, not {tolerance_mm!r}.")
    _check_output_dir(output)
    if dicom_series is None and image_path is not None and Path(image_path).is_dir():
        dicom_series = image_path
    spec = load_mapping(mapping_path) if mapping_path else None

    report("read", 0.0, "reading the prediction")
    pred = read_labels(pred_path, dicom_series, series)
    report("read", 0.5, "reading the reference")
    ref = read_labels(ref_path, dicom_series, series)
    _refuse_empty(pred, "prediction")
    _refuse_empty(ref, "reference")
    ct = None
    if image_path is not None:
        from coralbay.io.volumes import read_volume

        ct = read_volume(image_path, series if Path(image_path).is_dir() else None)
    warnings = [*pred.warnings, *ref.warnings]

    report("resample", 0.0, "bringing the reference onto the prediction's grid")
    grid = bring_onto_grid(ref.image, pred.image)
    prediction = sitk.GetArrayFromImage(pred.image)
    reference = sitk.GetArrayFromImage(grid.image)
    ref_counts = np.bincount(reference.ravel())
    ref_present = [int(v) for v in np.nonzero(ref_counts)[0] if v]
    if not ref_present:
        raise InputError("No labelled reference voxel lies inside the prediction's field of view; there is "
                         "nothing to compare.")
    if grid.resampled:
        warnings.append("The reference lies on a different grid; it was resampled onto the prediction's grid "
                        "through physical space (nearest neighbour).")
        if grid.coverage < MIN_REFERENCE_COVERAGE and not partial_reference:
            raise InputError(f"The reference covers only {100 * grid.coverage:.1f}% of the prediction's field of "
                             "view, so every structure predicted outside it would count as wrong; compare "
                             "with a reference of the same scan region (see --partial-reference in --help).")
        if grid.coverage < 0.999:
            warnings.append(f"The reference covers {100 * grid.coverage:.1f}% of the prediction's grid; "
                            "prediction voxels outside it are compared with background.")

    matching = match_labels(pred.values, ref_present, pred.table, ref.table, spec)
    warnings.extend(matching.warnings)
    ref_voxel_ml = float(np.prod(ref.image.GetSpacing())) / 1000.0
    for value, voxels in sorted(grid.lost_reference_voxels.items()):
        name = (ref.table.name_of(value) if ref.table else f"label {value}")
        warnings.append(f"{voxels * ref_voxel_ml:.2f} mL of reference {name} lie outside the prediction's "
                        "field of view and are not compared.")
    report("resample", 1.0, f"{len(matching.pairs)} structures matched by {matching.method}")

    spacing_zyx = tuple(float(s) for s in pred.image.GetSpacing()[::-1])
    voxel_ml = float(np.prod(pred.image.GetSpacing())) / 1000.0
    structures = _structure_metrics(prediction, reference, matching, spacing_zyx, voxel_ml, tolerance_mm, report)

    report("maps", 0.0, "difference maps")
    ref_to_pred = {p.reference_value: p.prediction_value for p in matching.pairs}
    pred_to_ref = {p.prediction_value: p.reference_value for p in matching.pairs}
    mapped = diffmaps.reference_in_prediction_values(reference, ref_to_pred)
    difference = diffmaps.difference_labels(prediction, mapped)
    distances = diffmaps.signed_distance_map(prediction, reference, mapped, pred_to_ref, spacing_zyx)
    report("maps", 0.7, "largest error")
    worst = diffmaps.largest_error_region(difference)
    worst_lps = None
    if worst is not None:
        worst_lps = [float(c) for c in pred.image.TransformIndexToPhysicalPoint((worst[2], worst[1], worst[0]))]

    metrics = {
        "prediction": str(Path(pred_path)),
        "reference": str(Path(ref_path)),
        "reference_resampled": grid.resampled,
        "tolerance_mm": float(tolerance_mm),
        "matched_by": matching.method,
        "structures": structures,
        "unmatched_prediction": [{"value": lab.value, "name": lab.name} for lab in matching.unmatched_prediction],
        "unmatched_reference": [{"value": lab.value, "name": lab.name} for lab in matching.unmatched_reference],
        "worst_error_lps": worst_lps,
        "warnings": warnings,
    }

    report("report", 0.0, "writing the review")
    with atomic_dir(output) as folder:
        write_reports(metrics, folder)
        difference_image = sitk.GetImageFromArray(difference)
        difference_image.CopyInformation(pred.image)
        write_image_verified(difference_image, folder / "difference.nii.gz", True,
                             target=Path(output) / "difference.nii.gz")
        (folder / "difference.labels.json").write_text(
            json.dumps(diffmaps.DIFFERENCE_TABLE.to_dict(), indent=1) + "\n", encoding="utf-8")
        distance_image = sitk.GetImageFromArray(distances)
        distance_image.CopyInformation(pred.image)
        write_image_verified(distance_image, folder / "surface_distance.nii.gz", True,
                             target=Path(output) / "surface_distance.nii.gz")
        from coralbay.review.overview import write_overview

        write_overview(folder / "overview.png", pred.image, prediction, reference, difference, worst, ct,
                       _overview_title(structures, worst_lps))
    report("report", 1.0, "done")
    return json.loads(metrics_json_text(metrics))


def _overview_title(structures: list[dict], worst_lps: list[float] | None) -> str:
    dices = [s["dice"] for s in structures if s["dice"] is not None]
    count = f"{len(structures)} structure{'' if len(structures) == 1 else 's'}"
    summary = f"{count}, mean Dice {np.mean(dices):.3f}" if dices else count
    if worst_lps is None:
        return f"{summary}; prediction and reference agree everywhere"
    x, y, z = worst_lps
    return f"{summary}; largest error at LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"

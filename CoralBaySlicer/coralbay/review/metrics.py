"""Voxel overlap metrics of one structure: counts, Dice, IoU, precision, sensitivity, volumes.

Definitions (P = predicted voxels, R = reference voxels, TP = |P and R|, FP = |P - R|,
FN = |R - P|, V = voxel volume):
    Dice = 2 TP / (2 TP + FP + FN)          IoU = TP / (TP + FP + FN)
    precision = TP / (TP + FP)              sensitivity = TP / (TP + FN)
    volumes in mL = count x V / 1000        volume difference % = 100 (|P| - |R|) / |R|
This is the one home of Dice in the engine: review, training validation, the demo and the
benchmark harness all call it. Undefined values (a division by zero) are None, which JSON writes as null:
    both empty -> every ratio None; reference empty -> Dice 0, IoU 0, precision 0,
    sensitivity None, volume difference None; prediction empty -> Dice 0, IoU 0,
    precision None, sensitivity 0, volume difference -100.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from coralbay.io.labels import LabelTable


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def dice_from_counts(tp: int, n_prediction: int, n_reference: int) -> float | None:
    """Dice = 2 TP / (|P| + |R|): None when both masks are empty, 0 when only one is."""
    return _ratio(2 * tp, n_prediction + n_reference)


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray, voxel_volume_ml: float) -> dict:
    """Overlap metrics of two boolean masks on the same grid."""
    tp = int(np.count_nonzero(prediction & reference))
    n_pred = int(np.count_nonzero(prediction))
    n_ref = int(np.count_nonzero(reference))
    fp, fn = n_pred - tp, n_ref - tp
    return {
        "dice": dice_from_counts(tp, n_pred, n_ref),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "sensitivity": _ratio(tp, tp + fn),
        "prediction_volume_ml": n_pred * voxel_volume_ml,
        "reference_volume_ml": n_ref * voxel_volume_ml,
        "volume_difference_percent": None if n_ref == 0 else 100.0 * (n_pred - n_ref) / n_ref,
        "tp_voxels": tp,
        "fp_voxels": fp,
        "fn_voxels": fn,
    }


def dice_per_structure(prediction: np.ndarray, truth: np.ndarray, table: LabelTable,
                       values: Sequence[int] | None = None) -> dict[str, float | None]:
    """Dice of each label of `table` between two label maps (same shape, label values).

    `values` maps the table's i-th label to the value used in the arrays (default the label
    values themselves; training passes class indices 1..N). The empty-mask rules are
    `dice_from_counts`'s.
    """
    values = list(values) if values is not None else [lab.value for lab in table]
    size = max(int(prediction.max(initial=0)), int(truth.max(initial=0)), max(values, default=0)) + 1
    joint = np.bincount(truth.astype(np.int64).ravel() * size + prediction.astype(np.int64).ravel(),
                        minlength=size * size).reshape(size, size)
    out: dict[str, float | None] = {}
    for lab, value in zip(table, values):
        out[lab.name] = dice_from_counts(int(joint[value, value]), int(joint[:, value].sum()),
                                         int(joint[value, :].sum()))
    return out


def mean_dice(scores: dict[str, float | None]) -> float | None:
    present = [v for v in scores.values() if v is not None]
    return float(np.mean(present)) if present else None

"""Voxel overlap metrics of one structure: counts, Dice, IoU, precision, sensitivity, volumes.

Definitions (P = predicted voxels, R = reference voxels, TP = |P and R|, FP = |P - R|,
FN = |R - P|, V = voxel volume):
    Dice = 2 TP / (2 TP + FP + FN)          IoU = TP / (TP + FP + FN)
    precision = TP / (TP + FP)              sensitivity = TP / (TP + FN)
    volumes in mL = count x V / 1000        volume difference % = 100 (|P| - |R|) / |R|
Undefined values (a division by zero) are None, which JSON writes as null:
    both empty -> every ratio None; reference empty -> Dice 0, IoU 0, precision 0,
    sensitivity None, volume difference None; prediction empty -> Dice 0, IoU 0,
    precision None, sensitivity 0, volume difference -100.
"""

from __future__ import annotations

import numpy as np


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def overlap_metrics(prediction: np.ndarray, reference: np.ndarray, voxel_volume_ml: float) -> dict:
    """Overlap metrics of two boolean masks on the same grid."""
    tp = int(np.count_nonzero(prediction & reference))
    n_pred = int(np.count_nonzero(prediction))
    n_ref = int(np.count_nonzero(reference))
    fp, fn = n_pred - tp, n_ref - tp
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
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

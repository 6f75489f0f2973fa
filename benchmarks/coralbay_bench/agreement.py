"""Per-structure agreement of two label maps on the same grid: Dice (the engine's, with its
empty-mask rules) and volumes in mL."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from coralbay.io.labels import LabelTable
from coralbay.review.metrics import dice_from_counts

DICE_BOUND = 0.99   # the agreement we promise between our labels and the MONAI path's
MIN_VOLUME_ML = 1.0  # structures the baseline labels smaller than this are reported, not judged


def structure_agreement(ours: sitk.Image, baseline: sitk.Image, table: LabelTable,
                        bound: float = DICE_BOUND, min_ml: float = MIN_VOLUME_ML) -> dict:
    """Dice per structure of `table`, with the baseline's and our volume in mL."""
    a = sitk.GetArrayViewFromImage(ours)
    b = sitk.GetArrayViewFromImage(baseline)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in size: {a.shape} vs {b.shape}")
    voxel_ml = float(np.prod(baseline.GetSpacing())) / 1000.0
    structures = []
    for label in table:
        mine, theirs = a == label.value, b == label.value
        n_mine, n_theirs = int(mine.sum()), int(theirs.sum())
        both = int(np.logical_and(mine, theirs).sum())
        dice = dice_from_counts(both, n_mine, n_theirs)  # None when neither labels it
        structures.append({"value": label.value, "name": label.name,
                           "dice": None if dice is None else round(dice, 5),
                           "baseline_ml": round(n_theirs * voxel_ml, 3), "ours_ml": round(n_mine * voxel_ml, 3),
                           "judged": n_theirs * voxel_ml > min_ml})
    judged = [s["dice"] for s in structures if s["judged"]]
    return {"bound": bound, "min_volume_ml": min_ml, "structures": structures,
            "judged": len(judged), "min_dice": min(judged) if judged else None,
            "holds": all(d >= bound for d in judged),
            "voxels_equal_fraction": round(float(np.mean(a == b)), 6)}

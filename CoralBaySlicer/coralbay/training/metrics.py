"""Plain metrics for training and the demo: Dice per structure and the area under the ROC curve.

Kept here (numpy only) so validation during training needs nothing beyond the engine.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from coralbay.io.labels import LabelTable


def dice_per_structure(prediction: np.ndarray, truth: np.ndarray, table: LabelTable,
                       values: Sequence[int] | None = None) -> dict[str, float | None]:
    """Dice of each label of `table` between two label maps (same shape, label values).

    `values` maps the table's i-th label to the value used in the arrays (default the label
    values themselves; training passes class indices 1..N). A structure absent from both maps
    has no Dice (None) rather than a perfect or a zero score.
    """
    values = list(values) if values is not None else [lab.value for lab in table]
    size = max(int(prediction.max(initial=0)), int(truth.max(initial=0)), max(values, default=0)) + 1
    joint = np.bincount(truth.astype(np.int64).ravel() * size + prediction.astype(np.int64).ravel(),
                        minlength=size * size).reshape(size, size)
    out: dict[str, float | None] = {}
    for lab, value in zip(table, values):
        both = joint[value, value]
        total = joint[value, :].sum() + joint[:, value].sum()
        out[lab.name] = float(2.0 * both / total) if total else None
    return out


def mean_dice(scores: dict[str, float | None]) -> float | None:
    present = [v for v in scores.values() if v is not None]
    return float(np.mean(present)) if present else None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve (the probability that a positive outranks a negative; ties
    count half); None when one of the two classes is missing."""
    s = np.asarray(scores, dtype=float)
    p = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

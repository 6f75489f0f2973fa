"""The area under the ROC curve for classification probes (numpy only).

Dice lives in `coralbay.review.metrics`, the one home of overlap metrics.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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

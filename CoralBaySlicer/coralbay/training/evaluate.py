"""Held-out evaluation of a freshly trained head through the full inference path.

Why through `segment_image`/`classify_image` and not on the training grid: those are what
`coralbay segment`/`classify` run, including the resampling back to each scan's own grid, so the
numbers recorded in a bundle's manifest are the numbers a user gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from coralbay.bundle.loader import LoadedBundle
from coralbay.bundle.manifest import Manifest
from coralbay.review.metrics import dice_per_structure, mean_dice
from coralbay.training.metrics import auroc

Progress = Callable[[float, str], None]


def in_memory_bundle(fields: dict, network: nn.Module) -> LoadedBundle:
    """A bundle for a network that is not written yet (same manifest fields it will be saved with)."""
    return LoadedBundle(Manifest(Path("."), {**fields, "weights": []}), network.eval())


def segmentation_on_phantoms(bundle: LoadedBundle, seeds: Sequence[int], device: torch.device,
                             progress: Progress | None = None) -> dict:
    """Dice per structure of `bundle` on phantoms at their own random spacing and orientation."""
    from coralbay.inference.segment import segment_image
    from coralbay.phantom import generate_phantom

    table = bundle.manifest.labels
    per_case = []
    for i, seed in enumerate(seeds):
        phantom = generate_phantom(int(seed))
        result = segment_image(phantom.image, bundle, device)
        per_case.append(dice_per_structure(sitk.GetArrayViewFromImage(result.labels),
                                           sitk.GetArrayViewFromImage(phantom.labels), table))
        if progress:
            progress((i + 1) / len(seeds), f"phantom {seed}: mean Dice {mean_dice(per_case[-1]):.3f}")
    dice = {}
    for lab in table:
        scores = [c[lab.name] for c in per_case if c[lab.name] is not None]
        dice[lab.name] = round(float(np.mean(scores)), 4) if scores else None
    return {"phantom_seeds": [int(s) for s in seeds], "dice": dice, "mean_dice": round(mean_dice(dice) or 0.0, 4),
            "mean_dice_per_case": [round(mean_dice(c) or 0.0, 4) for c in per_case],
            "evaluated_on": "each phantom's own grid (random spacing and orientation), through segment_image"}


def classification_on_phantoms(bundle: LoadedBundle, seeds: Sequence[int], device: torch.device,
                               lesion_points: bool = False, progress: Progress | None = None) -> dict:
    """AUROC and accuracy of a liver-lesion classifier on held-out phantoms, through classify_image
    (per scan, or at each phantom's lesion centre with and without the lesion)."""
    from coralbay.inference.classify import classify_image
    from coralbay.training.data import phantom_classification_items

    positive = bundle.manifest.classes[-1]
    scores, truth = [], []
    items = phantom_classification_items(seeds, lesion_points)
    for i, item in enumerate(items):
        for example in item.examples():
            report = classify_image(example.image, bundle, device, point_lps=example.point_lps)
            scores.append(report["probabilities"][positive])
            truth.append(example.label == positive)
        if progress:
            progress((i + 1) / len(items), item.name)
    area = auroc(scores, truth)
    correct = sum((score >= 0.5) == t for score, t in zip(scores, truth))
    return {"phantom_seeds": [int(s) for s in seeds], "examples": len(truth), "positive_class": positive,
            "auroc": round(area, 4) if area is not None else None,
            "accuracy": round(correct / max(1, len(truth)), 4), "positives": int(sum(truth)),
            "evaluated_on": ("the region around each phantom's first lesion centre, with the lesion and in "
                             "the phantom's lesion-free twin" if lesion_points else "whole phantoms")
                            + " (own random spacing and orientation), through classify_image"}

"""The segmentation loss: Dice + cross-entropy, as eva and the Swin-UNETR papers train with.

Why both: cross-entropy gives smooth per-voxel gradients from the first step, Dice keeps small
structures (aorta, lesions) from being drowned by the background and the liver.

Optional class weights (inverse square root of each class's voxel share) make a network that
starts from scratch find small structures sooner: without them it first learns the few large
classes and may take thousands of steps to split, say, spleen from liver.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


def segmentation_loss(class_weights: torch.Tensor | None = None) -> nn.Module:
    """Loss of (B, C, ...) logits against (B, 1, ...) integer class targets."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0, weight=class_weights)


def inverse_sqrt_weights(targets: Sequence[np.ndarray], num_classes: int, max_ratio: float = 10.0) -> torch.Tensor:
    """Per-class weights proportional to 1/sqrt(voxel share), at most `max_ratio` apart, mean 1.

    Classes absent from every target get the largest weight (they cannot affect the loss anyway).
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    for target in targets:
        counts += np.bincount(target.ravel(), minlength=num_classes)[:num_classes]
    share = counts / max(counts.sum(), 1.0)
    weights = 1.0 / np.sqrt(np.maximum(share, 1e-12))
    weights = np.minimum(weights, weights.min() * max_ratio)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)

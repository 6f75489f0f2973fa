"""The segmentation loss: Dice + cross-entropy, as eva and the Swin-UNETR papers train with.

Why both: cross-entropy gives smooth per-voxel gradients from the first step, Dice keeps small
structures (aorta, lesions) from being drowned by the background and the liver.
"""

from __future__ import annotations

from torch import nn


def segmentation_loss() -> nn.Module:
    """Loss of (B, C, ...) logits against (B, 1, ...) integer class targets."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0)

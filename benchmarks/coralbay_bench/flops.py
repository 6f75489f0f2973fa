"""Model FLOPs per window, counted by torch's FlopCounterMode (a multiply-add counts as 2).

Why on MONAI's plain forward and on the meta device: the figure describes the model's math, not
an implementation of it (our fused attention is counted differently by the counter), and the
meta device counts shapes without computing, so a U96B window costs nothing to count.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from coralbay.inference.fast_swin import disable_fast_swin


def flops_per_window(network: torch.nn.Module, window: Sequence[int], in_channels: int = 1) -> int:
    """FLOPs of one forward pass of one window (batch 1)."""
    try:
        model = copy.deepcopy(network).to("meta")
        device = torch.device("meta")
    except (RuntimeError, NotImplementedError):  # a module that cannot go to meta: count for real
        model = copy.deepcopy(network).to("cpu")
        device = torch.device("cpu")
    disable_fast_swin(model)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros((1, in_channels, *window), device=device))
    return int(counter.get_total_flops())

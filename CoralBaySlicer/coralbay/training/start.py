"""Where training starts: random weights, an existing bundle (`--init-from`), and/or encoder
weights from a file or the hub (`--backbone`, e.g. the real CoralBay weights).

Why a bundle can seed another: the classification demo reuses the encoder of the segmentation
demo, as a foundation-model user reuses the CoralBay encoder; and a segmentation run can
continue from a bundle it wrote earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from coralbay.bundle.loader import (LoadedBundle, backbone_state, feature_size_of, load_bundle,
                                    load_encoder_state)
from coralbay.errors import UsageError

# Defaults when neither the command line nor an --init-from bundle says otherwise: the settings
# CoralBay is used with (see DESIGN.md).
DEFAULT_FEATURE_SIZE = 48
DEFAULT_SPACING_MM = (1.5, 1.5, 1.5)
DEFAULT_WINDOW_HU = (-175.0, 250.0)
DEFAULT_WINDOW = (96, 96, 96)
DEFAULT_OVERLAP = 0.5
ENCODER_PREFIX = "encoder."   # the encoder's tensors in a network's state dict
OUTPUT_PREFIX = "decoder.out."  # the segmentation output layer (one channel per structure)
INIT_PARTS = ("all", "encoder", "all-but-output")


@dataclass
class StartingPoint:
    init: LoadedBundle | None = None
    backbone: tuple[dict[str, torch.Tensor], str] | None = None
    parts: str = "all"            # the init bundle's tensors copied: all, encoder, all-but-output

    def copies(self, key: str) -> bool:
        """Whether the init bundle's tensor `key` is copied (new structures need a fresh output layer)."""
        if self.parts == "encoder":
            return key.startswith(ENCODER_PREFIX)
        if self.parts == "all-but-output":
            return not key.startswith(OUTPUT_PREFIX)
        return True

    def feature_size(self, requested: int | None) -> int:
        """The encoder width: as requested, which must agree with the weights we start from."""
        known = [(self.init.spec.feature_size, f"the bundle {self.init.manifest.name}")] if self.init else []
        if self.backbone and feature_size_of(self.backbone[0]) is not None:
            known.append((feature_size_of(self.backbone[0]), f"the backbone {self.backbone[1]}"))
        for size, source in known:
            if requested is not None and requested != size:
                raise UsageError(f"--feature-size {requested} differs from the encoder width {size} of {source}.")
        if len({size for size, _ in known}) > 1:
            raise UsageError("The --init-from bundle and the --backbone have different encoder widths.")
        return requested or (known[0][0] if known else DEFAULT_FEATURE_SIZE)

    def preprocessing(self) -> dict:
        """Spacing, HU window, window size, overlap and anti-aliasing: the init bundle's, else the defaults."""
        if self.init:
            pre, infer = self.init.manifest.preprocessing, self.init.manifest.inference
            return {"spacing_mm": pre.spacing_mm, "window_hu": pre.intensity_window_hu,
                    "window_size": infer.window_size, "overlap": infer.overlap, "antialias": pre.antialias}
        return {"spacing_mm": DEFAULT_SPACING_MM, "window_hu": DEFAULT_WINDOW_HU,
                "window_size": DEFAULT_WINDOW, "overlap": DEFAULT_OVERLAP, "antialias": True}

    def apply(self, network: nn.Module) -> list[str]:
        """Copy the starting weights into a freshly built network; notes on what was copied."""
        notes = []
        if self.init:
            own = network.state_dict()
            theirs = self.init.network.state_dict()
            matched = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape
                       and self.copies(k)}
            network.load_state_dict(matched, strict=False)
            skipped = sorted(k for k in own if k not in matched)
            notes.append(f"Started from {len(matched)} tensors of the bundle {self.init.manifest.name}"
                         + (f"; {len(skipped)} new or resized (e.g. {skipped[0]})." if skipped else "."))
        if self.backbone:
            notes += load_encoder_state(network, *self.backbone)
        return notes


def starting_point(init_from: str | None, backbone: str | None, trust_remote_code: bool = False,
                   log: Callable[[str], None] | None = None, parts: str = "all") -> StartingPoint:
    if parts not in INIT_PARTS:
        raise UsageError(f"The parts of the starting bundle to copy must be one of {', '.join(INIT_PARTS)}.")
    init = load_bundle(init_from, log=log) if init_from else None
    state = backbone_state(backbone, trust_remote_code) if backbone else None
    return StartingPoint(init, state, parts)

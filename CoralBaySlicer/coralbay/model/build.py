"""Build networks from a bundle's architecture description.

Why one place: the bundle loader, training, the benchmark and the tests must all build the same
module tree so that state-dict key names (encoder.*, decoder.*, head.*) always agree.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from coralbay.model.decoder import SwinUNETRDecoder
from coralbay.model.encoder import CoralBayEncoder, pool_features, pooled_size


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a bundle manifest says about the network ("architecture" object)."""

    task: str  # "segmentation" or "classification"
    feature_size: int = 48
    in_channels: int = 1
    out_channels: int = 2  # segmentation classes incl. background, or classification classes
    project_dims: tuple[int, ...] | None = None
    pooling: str = "multiscale"
    use_v2: bool = True

    @classmethod
    def from_manifest(cls, task: str, arch: dict[str, Any], num_outputs: int) -> "ArchitectureSpec":
        pd = arch.get("project_dims")
        return cls(task=task, feature_size=int(arch.get("feature_size", 48)),
                   in_channels=int(arch.get("in_channels", 1)), out_channels=num_outputs,
                   project_dims=tuple(pd) if pd else None, pooling=arch.get("pooling", "multiscale"),
                   use_v2=bool(arch.get("use_v2", True)))

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature_size": self.feature_size, "in_channels": self.in_channels,
                               "use_v2": self.use_v2}
        if self.task == "segmentation":
            out["project_dims"] = list(self.project_dims) if self.project_dims else None
        else:
            out["pooling"] = self.pooling
        return out


class SegmentationNetwork(nn.Module):
    """Encoder + Swin-UNETR decoder: (B, 1, D, H, W) -> (B, classes, D, H, W) logits."""

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.encoder = CoralBayEncoder(spec.in_channels, spec.feature_size, spec.use_v2)
        self.decoder = SwinUNETRDecoder(spec.out_channels, spec.feature_size, spec.project_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ClassificationNetwork(nn.Module):
    """Encoder + linear head on pooled multi-scale features.

    Classification of a scan pools the per-window `embed` vectors over the sliding windows
    first (see `inference.classify`), then applies `head` once; `forward` is the one-window case.
    """

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.pooling = spec.pooling
        self.encoder = CoralBayEncoder(spec.in_channels, spec.feature_size, spec.use_v2)
        self.head = nn.Linear(pooled_size(spec.feature_size, spec.pooling), spec.out_channels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.encoder(x), self.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def build_network(spec: ArchitectureSpec) -> nn.Module:
    if spec.task == "segmentation":
        return SegmentationNetwork(spec)
    if spec.task == "classification":
        return ClassificationNetwork(spec)
    raise ValueError(f"unknown task {spec.task!r}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device (no memory, no random init).

    Why not `with torch.device("meta")`: MONAI's SwinTransformer calls `.item()` on a tensor in
    its constructor, which meta tensors refuse. Moving each parameter as it is registered avoids
    that; a 847 M-parameter model is then built in a second and without 3.4 GB of memory, and
    real weights are attached with `load_state_dict(..., assign=True)`. Buffers stay real: they
    are small and some (DERIVED_BUFFERS) are computed by the constructor, not stored in bundles.
    """
    original_param = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original_param(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original_param  # type: ignore[method-assign]


# Buffers that the constructor computes from the window size (Swin's relative position index):
# 7.5 MB of int64 per model whatever its width, so bundles do not store them.
DERIVED_BUFFERS = ("relative_position_index",)


def is_derived_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS

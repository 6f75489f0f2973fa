"""Swin-UNETR segmentation decoder (eva's `SwinUNETRDecoderWithProjection` layout).

Five `UnetrUpBlock`s and a `UnetOutBlock`, optionally preceded by 1x1x1 projections of the six
encoder feature maps. Without projections the names match eva's plain `SwinUNETRDecoder` too.
The projections keep the decoder light on wide encoders: 22.75 M parameters for U96H with
project_dims [48, 48, 96, 192, 384, 768].
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrUpBlock
from torch import nn

from coralbay.model.encoder import FEATURE_MULTIPLIERS

_PROJECTION_NAMES = ("proj_enc0", "proj_enc1", "proj_enc2", "proj_enc3", "proj_hid3", "proj_dec4")


def _up_block(channels_in: int, channels_out: int) -> UnetrUpBlock:
    return UnetrUpBlock(spatial_dims=3, in_channels=channels_in, out_channels=channels_out,
                        kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True)


class SwinUNETRDecoder(nn.Module):
    """Maps the encoder's six feature maps to per-voxel class logits at input resolution."""

    def __init__(self, out_channels: int, feature_size: int = 48,
                 project_dims: Sequence[int] | None = None) -> None:
        super().__init__()
        if project_dims is not None and len(project_dims) != 6:
            raise ValueError(f"project_dims needs 6 values, got {len(project_dims)}")
        self.project_dims = list(project_dims) if project_dims else None
        dims = self.project_dims or [m * feature_size for m in FEATURE_MULTIPLIERS]
        self.decoder5 = _up_block(dims[5], dims[4])
        self.decoder4 = _up_block(dims[4], dims[3])
        self.decoder3 = _up_block(dims[3], dims[2])
        self.decoder2 = _up_block(dims[2], dims[1])
        self.decoder1 = _up_block(dims[1], dims[0])
        self.out = UnetOutBlock(spatial_dims=3, in_channels=dims[0], out_channels=out_channels)
        if self.project_dims:
            for name, mult, dim in zip(_PROJECTION_NAMES, FEATURE_MULTIPLIERS, self.project_dims):
                setattr(self, name, nn.Conv3d(mult * feature_size, dim, kernel_size=1))

    def _project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.project_dims:
            return features
        return [getattr(self, name)(f) for name, f in zip(_PROJECTION_NAMES, features)]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        enc0, enc1, enc2, enc3, hid3, dec4 = self._project(features)
        x = self.decoder5(dec4, hid3)
        x = self.decoder4(x, enc3)
        x = self.decoder3(x, enc2)
        x = self.decoder2(x, enc1)
        x = self.decoder1(x, enc0)
        return self.out(x)

"""CoralBay encoder: the Swin-UNETR encoder of the eva framework, built from MONAI blocks.

Submodule and parameter names follow eva's `SwinUNETREncoder` exactly (swinViT, encoder1,
encoder2, encoder3, encoder4, encoder10), so checkpoints trained with eva load without renaming.
feature_size 48 gives 53.16 M parameters (CoralBayU96B), 192 gives 847.28 M (CoralBayU96H).
"""

from __future__ import annotations

import torch
from monai.networks.blocks.unetr_block import UnetrBasicBlock
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

# Channel multipliers of the six feature maps, relative to feature_size, and their strides.
FEATURE_MULTIPLIERS = (1, 1, 2, 4, 8, 16)
FEATURE_STRIDES = (1, 2, 4, 8, 16, 32)


def _residual_block(channels_in: int, channels_out: int) -> UnetrBasicBlock:
    return UnetrBasicBlock(spatial_dims=3, in_channels=channels_in, out_channels=channels_out,
                           kernel_size=3, stride=1, norm_name="instance", res_block=True)


class CoralBayEncoder(nn.Module):
    """Hierarchical 3D Swin-Transformer (v2) with residual conv skip blocks.

    `forward(x)` returns six feature maps [enc0, enc1, enc2, enc3, hidden3, dec4] at strides
    1, 2, 4, 8, 16, 32 with F, F, 2F, 4F, 8F, 16F channels. Spatial input sizes must be
    divisible by 32.
    """

    def __init__(self, in_channels: int = 1, feature_size: int = 48, use_v2: bool = True) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.swinViT = SwinTransformer(
            in_chans=in_channels, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
            depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0, qkv_bias=True,
            drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm,
            spatial_dims=3, use_v2=use_v2,
        )
        f = feature_size
        self.encoder1 = _residual_block(in_channels, f)
        self.encoder2 = _residual_block(f, f)
        self.encoder3 = _residual_block(2 * f, 2 * f)
        self.encoder4 = _residual_block(4 * f, 4 * f)
        self.encoder10 = _residual_block(16 * f, 16 * f)

    @property
    def feature_channels(self) -> list[int]:
        return [m * self.feature_size for m in FEATURE_MULTIPLIERS]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.skip_features(x, self.swinViT(x))

    def skip_features(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The six feature maps from the input and the transformer's hidden states.

        Separate from `forward` so that training with a frozen transformer can compute (and
        cache) `swinViT(x)` once and still train the convolutional blocks.
        """
        return [self.encoder1(x), self.encoder2(hidden[0]), self.encoder3(hidden[1]),
                self.encoder4(hidden[2]), hidden[3], self.encoder10(hidden[4])]


def pool_features(features: list[torch.Tensor], pooling: str = "multiscale") -> torch.Tensor:
    """Global-average-pool feature maps into one vector per window.

    "multiscale" pools [enc0, enc1, enc2, enc3, dec4] and concatenates them (24F values), as eva's
    `forward_encoders`; "head" pools only the last map (16F values).
    """
    if pooling == "multiscale":
        maps = features[:4] + features[5:]
    elif pooling == "head":
        maps = features[-1:]
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    return torch.cat([m.float().mean(dim=(2, 3, 4)) for m in maps], dim=1)


def pooled_size(feature_size: int, pooling: str) -> int:
    return 24 * feature_size if pooling == "multiscale" else 16 * feature_size

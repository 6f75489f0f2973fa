"""The CoralBay network: parameter counts of the published sizes and eva checkpoint compatibility."""

from __future__ import annotations

import torch
from monai.networks.blocks.unetr_block import UnetrBasicBlock
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from coralbay.model import ArchitectureSpec, build_network, count_parameters, parameters_on_meta
from coralbay.model.decoder import SwinUNETRDecoder
from coralbay.model.encoder import CoralBayEncoder, pool_features


def test_parameter_counts_of_published_sizes():
    with parameters_on_meta():
        u96b = CoralBayEncoder(feature_size=48)
        u96h = CoralBayEncoder(feature_size=192)
        light_decoder = SwinUNETRDecoder(14, 192, project_dims=[48, 48, 96, 192, 384, 768])
        plain_decoder = SwinUNETRDecoder(14, 48)
    assert round(count_parameters(u96b) / 1e6, 2) == 53.16
    assert round(count_parameters(u96h) / 1e6, 2) == 847.28
    assert round(count_parameters(light_decoder) / 1e6, 2) == 22.75
    assert round(count_parameters(plain_decoder) / 1e6, 1) == 19.6
    assert all(p.is_meta for p in u96h.parameters())


class EvaEncoderLayout(nn.Module):
    """eva's SwinUNETREncoder module tree, rebuilt here from the facts in DESIGN.md only."""

    def __init__(self, f: int) -> None:
        super().__init__()
        self.swinViT = SwinTransformer(in_chans=1, embed_dim=f, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                       depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0,
                                       qkv_bias=True, spatial_dims=3, use_v2=True)

        def block(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name="instance", res_block=True)

        self.encoder1, self.encoder2 = block(1, f), block(f, f)
        self.encoder3, self.encoder4 = block(2 * f, 2 * f), block(4 * f, 4 * f)
        self.encoder10 = block(16 * f, 16 * f)


def test_eva_state_dict_loads_with_no_missing_or_unexpected_keys(tmp_path):
    from coralbay.bundle.loader import _load_encoder

    torch.manual_seed(1)
    eva = EvaEncoderLayout(6)
    ours = build_network(ArchitectureSpec("segmentation", feature_size=6, out_channels=3))
    assert set(eva.state_dict()) == set(ours.encoder.state_dict())
    for key, value in eva.state_dict().items():
        assert tuple(value.shape) == tuple(ours.encoder.state_dict()[key].shape), key
    # As eva's Lightning checkpoints store it: under "state_dict", prefixed by the module path.
    ckpt = tmp_path / "eva.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in eva.state_dict().items()},
                "epoch": 3}, ckpt)
    from coralbay.bundle.weights import load_checkpoint

    notes = _load_encoder(ours, load_checkpoint(ckpt), ckpt.name)
    assert notes == [f"Loaded {len(eva.state_dict())} encoder tensors from eva.ckpt."]
    for key, value in eva.state_dict().items():
        assert torch.equal(ours.encoder.state_dict()[key], value), key


def test_pooled_feature_sizes_follow_design():
    net = build_network(ArchitectureSpec("classification", feature_size=6, out_channels=3))
    with torch.inference_mode():
        feats = net.encoder(torch.rand(1, 1, 64, 64, 64))
    assert [f.shape[1] for f in feats] == [6, 6, 12, 24, 48, 96]
    assert [f.shape[2] for f in feats] == [64, 32, 16, 8, 4, 2]
    assert pool_features(feats, "multiscale").shape == (1, 24 * 6)
    assert pool_features(feats, "head").shape == (1, 16 * 6)

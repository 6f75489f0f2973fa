"""The memory-lean forward (`inference.lean_forward`) gives MONAI's forward to float rounding.

Small widths and windows: the same code path as U96B/U96H, a fraction of the cost.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock

from coralbay.inference import lean_forward
from coralbay.inference.fast_swin import disable_fast_swin, enable_fast_swin
from coralbay.inference.folded_upsample import UpsampledInput, upsampled_rows
from coralbay.inference.lean_forward import LeanSegmentation, _res_block, _rows_of, lean_supported
from coralbay.inference.slab_block import PlainInput, ResBlockPlan
from coralbay.model import ArchitectureSpec, build_network

BOUND = 1e-4  # relative to the largest logit, as test_fast_inference's bound


def _close(out: torch.Tensor, reference: torch.Tensor) -> bool:
    return float((out - reference).abs().max()) <= BOUND * float(reference.abs().max())


def _randomise_norms(module: torch.nn.Module) -> None:
    """Give the instance norms (affine or not) and biases non-trivial values."""
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


@pytest.mark.parametrize("spec, shape", [
    (ArchitectureSpec("segmentation", feature_size=6, out_channels=3), (2, 1, 32, 64, 64)),
    (ArchitectureSpec("segmentation", feature_size=6, out_channels=4, project_dims=(6, 6, 12, 12, 24, 24)),
     (1, 1, 64, 32, 96)),
    (ArchitectureSpec("segmentation", feature_size=12, out_channels=2, use_v2=False), (1, 1, 64, 64, 32)),
])
@pytest.mark.parametrize("slab_bytes", [4096, lean_forward.CPU_SLAB_BYTES])  # 1-2 rows per slab, and the default
def test_lean_forward_equals_monai_forward(spec, shape, slab_bytes, monkeypatch):
    monkeypatch.setattr(lean_forward, "CPU_SLAB_BYTES", slab_bytes)
    torch.manual_seed(0)
    network = build_network(spec).eval()
    x = torch.rand(shape)
    disable_fast_swin(network)
    with torch.inference_mode():
        reference = network(x)
    lean = LeanSegmentation(network)
    assert lean.supported
    enable_fast_swin(network)
    try:
        with torch.inference_mode():
            out = lean(x)
    finally:
        disable_fast_swin(network)
    assert out.shape == reference.shape and out.dtype == reference.dtype
    assert _close(out, reference)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("depth, slab", [(13, 4), (5, 8), (9, 1), (12, 3)])
def test_streamed_residual_block_equals_the_block(depth, slab, channels_last):
    """Slab edges, the halo row saved across the in-place conv2, and volume edges at any slab size."""
    torch.manual_seed(depth)
    block = UnetrBasicBlock(3, 3, 5, kernel_size=3, stride=1, norm_name=("instance", {"affine": True}),
                            res_block=True).eval()
    _randomise_norms(block)
    x = torch.randn(1, 3, depth, 7, 6)
    with torch.inference_mode():
        reference = block(x)
        inputs = PlainInput(_rows_of(x), depth, channels_last)
        out = ResBlockPlan(_res_block(block)).run(inputs, slab, channels_last=channels_last)
        pieces = torch.zeros_like(reference)
        ResBlockPlan(_res_block(block)).run(inputs, slab, lambda a, b, rows: pieces[:, :, a:b].copy_(rows),
                                             channels_last)
    assert _close(out, reference) and _close(pieces, reference)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("depth, slab", [(10, 3), (6, 8), (8, 2), (2, 1), (12, 5)])
def test_streamed_up_block_equals_the_block(depth, slab, channels_last, folded):
    """The up-block's input recomputed per slab (concatenated rows), or never built (the transposed
    conv folded into conv1 and conv3 on the coarse grid): odd slab starts and volume edges, where
    the transposed conv's bias must stop exactly at the border."""
    torch.manual_seed(depth + slab)
    block = UnetrUpBlock(3, 6, 4, kernel_size=3, upsample_kernel_size=2, norm_name=("instance", {"affine": True}),
                         res_block=True).eval()
    block.transp_conv.conv.bias = torch.nn.Parameter(torch.randn(4))  # MONAI's has none; ours must stop at the border
    _randomise_norms(block)
    inp, skip = torch.randn(1, 6, depth // 2, 4, 5), torch.randn(1, 4, depth, 8, 10)
    with torch.inference_mode():
        reference = block(inp, skip)
        plan = ResBlockPlan(_res_block(block.conv_block))
        transp = block.transp_conv.conv
        if folded:
            inputs = UpsampledInput(transp, inp, skip, plan, channels_last)
        else:
            inputs = PlainInput(upsampled_rows(transp, inp, skip, channels_last), depth, channels_last)
        out = plan.run(inputs, slab, channels_last=channels_last)
    assert _close(out, reference)


def test_folded_up_block_follows_weights_changed_in_place():
    """The fold is cached between forwards; an in-place update (training) must rebuild it."""
    torch.manual_seed(3)
    block = UnetrUpBlock(3, 6, 4, kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True).eval()
    block.transp_conv.conv.bias = torch.nn.Parameter(torch.randn(4))
    inp, skip = torch.randn(1, 6, 3, 4, 4), torch.randn(1, 4, 6, 8, 8)
    transp = block.transp_conv.conv
    for _ in range(2):
        with torch.inference_mode():
            plan = ResBlockPlan(_res_block(block.conv_block))
            out = plan.run(UpsampledInput(transp, inp, skip, plan, True), 2, channels_last=True)
            assert _close(out, block(inp, skip))
        with torch.no_grad():
            transp.weight.mul_(-0.5)
            transp.bias.add_(1.0)
            block.conv_block.conv1.conv.weight.mul_(1.5)


def test_other_networks_run_their_own_forward():
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    assert not lean_supported(conv)
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.inference_mode():
        assert torch.equal(LeanSegmentation(conv)(x), conv(x))

"""A memory-lean inference forward of the segmentation network, with the same weights and math.

Why: at CoralBay's real widths (U96B: F=48, U96H: F=192, 96^3 windows) a window's activations
are the memory: every full-resolution tensor of F channels is 170 MB at F=48 (680 MB at F=192),
and MONAI's forward holds several of them at once (encoder1's and decoder1's residual blocks,
the concatenated skip, the norms), for every window of the batch at the same time. This forward
computes exactly what `SegmentationNetwork.forward` computes, but:

- runs the windows of a batch one after the other (instance norm makes windows independent);
- runs every residual conv block (`UnetResBlock`, inside `UnetrBasicBlock` and `UnetrUpBlock`,
  the Swin v2 stages' conv blocks included)
  in slabs along the first axis, each slab with the one-row halo its 3x3x3 convolution needs.
  Instance norm needs whole-window statistics, so a block is three passes over its slabs:
  conv1 (per-slab statistics merged in float64), then norm1 + LeakyReLU + conv2 written
  back over conv1's output in the same buffer (one saved halo row makes that safe), then
  norm2 + residual (+ norm3 of the 1x1 conv3) + LeakyReLU. One buffer of the block's output
  size is all that is held besides its input; the up-block's transposed convolution and the
  concatenation with the skip are recomputed per slab instead of being stored;
- computes each skip connection only just before the decoder block that reads it and frees it
  right after, and writes the output block's logits slab by slab;
- slabs are also faster on the CPU: a 3x3x3 convolution over an 8-row slab keeps its working set
  in cache (about 2x faster than one call over the whole 96^3 window on an idle 2-core CPU,
  measured with oneDNN; on a CPU shared with other work the many smaller calls lose part of that).
  For speed the large-plane blocks run channels-last, statistics are plain per-channel sums,
  halo rows go through one reused workspace, norm3 is folded into conv3, and the up-blocks'
  transposed convolution is a matrix product written with the skip straight into the
  concatenated rows (measurements: docs/benchmarks.md, "Speed of the lean forward").

Nothing here changes the module tree or parameter names. Networks this module does not know
(other block types, kernel sizes or strides) run their own forward. `LeanSegmentation(network)`
is a module with the network's interface; the tests compare it with MONAI's forward.

Where the pieces live: one residual block's three passes over slabs, `slab_block`; an up-block's
input without building it (the folded transposed convolution), `folded_upsample`; here, which
block runs when and on what (the network's forward as a schedule of those blocks).
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import nn

from coralbay.inference.folded_upsample import FOLD_MIN_PLANE, UpsampledInput, upsampled_rows
from coralbay.inference.slab_block import Consumer, PlainInput, ResBlockPlan, Rows, conv1x1, only_conv
from coralbay.model.build import SegmentationNetwork

# Bytes of one slab of a block's widest tensor: about 4 rows of decoder1's 96-channel input at
# U96B (96^2 x 96 x 4 bytes per row), a whole 24^3 map in one slab. Fewer, larger calls cost less
# on a CPU shared with other work (each call waits for both threads); more rows held more memory
# (measured at U96B, one window: 16 MB 545 MB peak, 24 MB 600 MB, 8 rows 559 MB).
CPU_SLAB_BYTES = 16 * 2 ** 20
ACCELERATOR_SLAB_BYTES = 512 * 2 ** 20  # on a GPU fewer, larger kernels are cheaper

# Blocks whose rows have at least this many voxels (H x W) run channels-last: oneDNN's 3x3x3
# convolution is about 1.3x faster that way at 96^2 and 48^2 planes, 1.15-1.3x at 24^2 (96-192
# channels), even at 12^2 and slower at 6^2 (384 channels; measured on the 2-core AVX-512 CPU,
# see docs/benchmarks.md).
CHANNELS_LAST_MIN_PLANE = 24 * 24


def _res_block(block: nn.Module) -> UnetResBlock:
    if isinstance(block, UnetrBasicBlock):
        block = block.layer
    if not isinstance(block, UnetResBlock):
        raise NotImplementedError(f"{type(block).__name__} is not streamed")
    return block


def _rows_of(x: torch.Tensor) -> Rows:
    return lambda lo, hi: x[:, :, lo:hi]


class LeanSegmentation(nn.Module):
    """`network`'s forward with far less activation memory (see the module doc); same results."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.supported = lean_supported(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.supported or torch.is_grad_enabled():
            return self.network(x)
        slab = CPU_SLAB_BYTES if x.device.type == "cpu" else ACCELERATOR_SLAB_BYTES
        out: torch.Tensor | None = None
        for item in range(x.shape[0]):
            out = _forward_one(self.network, x[item:item + 1], slab, out, item, x.shape[0])
        assert out is not None
        return out


def lean_supported(network: nn.Module) -> bool:
    """Whether `network` is built from the blocks this forward streams."""
    if not isinstance(network, SegmentationNetwork):
        return False
    enc, dec = network.encoder, network.decoder
    try:
        swin = enc.swinViT
        v2 = [getattr(swin, f"layers{i}c")[0] for i in range(1, 5)] if swin.use_v2 else []
        for block in (enc.encoder1, enc.encoder2, enc.encoder3, enc.encoder4, enc.encoder10, *v2):
            ResBlockPlan(_res_block(block))
        for up in (dec.decoder1, dec.decoder2, dec.decoder3, dec.decoder4, dec.decoder5):
            if not isinstance(up, UnetrUpBlock):
                return False
            ResBlockPlan(_res_block(up.conv_block))
            only_conv(up.transp_conv)
        if not isinstance(dec.out, UnetOutBlock) or only_conv(dec.out.conv).kernel_size != (1, 1, 1):
            return False
    except NotImplementedError:
        return False
    return True


def _swin_hidden(swin: nn.Module, x: torch.Tensor, conv_block: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                 ) -> list[torch.Tensor]:
    """MONAI's `SwinTransformer.forward(x, normalize=True)`, with the v2 conv blocks streamed."""
    x0 = swin.pos_drop(swin.patch_embed(x))
    hidden = [swin.proj_out(x0, True)]
    for stage in range(1, 5):  # no .contiguous(): a channels-last map is the layer's token grid as it is
        if swin.use_v2:
            x0 = conv_block(getattr(swin, f"layers{stage}c")[0], x0)
        x0 = getattr(swin, f"layers{stage}")[0](x0)
        hidden.append(swin.proj_out(x0, True))
    return hidden


def _channels_last(like: torch.Tensor) -> bool:
    return like.device.type == "cpu" and like.shape[3] * like.shape[4] >= CHANNELS_LAST_MIN_PLANE


def _slab_rows(plan: ResBlockPlan, like: torch.Tensor, slab_bytes: int) -> int:
    """Rows per slab so that one slab of the block's widest tensor takes about `slab_bytes`."""
    row = like.shape[3] * like.shape[4] * max(plan.conv1.in_channels, plan.out_channels) * 4
    return max(1, min(like.shape[2], slab_bytes // row))


def _forward_one(network: SegmentationNetwork, x: torch.Tensor, slab_bytes: int, out: torch.Tensor | None,
                 item: int, batch: int) -> torch.Tensor:
    """Window `item` of a batch: skips computed just before use and freed after; its logits are
    written slab by slab into `out[item]` (allocated here for the first window)."""
    enc, dec = network.encoder, network.decoder
    names = ("proj_enc0", "proj_enc1", "proj_enc2", "proj_enc3", "proj_hid3", "proj_dec4")

    def project(level: int, t: torch.Tensor) -> torch.Tensor:
        return getattr(dec, names[level])(t) if dec.project_dims else t

    def basic(block: nn.Module, t: torch.Tensor, consume: Consumer | None = None) -> torch.Tensor | None:
        plan = ResBlockPlan(_res_block(block))
        layout = _channels_last(t)
        return plan.run(PlainInput(_rows_of(t), t.shape[2], layout), _slab_rows(plan, t, slab_bytes), consume, layout)

    def up(block: UnetrUpBlock, t: torch.Tensor, skip: torch.Tensor,
           consume: Consumer | None = None) -> torch.Tensor | None:
        layout = _channels_last(skip)
        plan = ResBlockPlan(_res_block(block.conv_block))
        transp = only_conv(block.transp_conv)
        if skip.shape[3] * skip.shape[4] >= FOLD_MIN_PLANE:
            inputs: PlainInput | UpsampledInput = UpsampledInput(transp, t, skip, plan, layout)
        else:
            inputs = PlainInput(upsampled_rows(transp, t, skip, layout), skip.shape[2], layout)
        return plan.run(inputs, _slab_rows(plan, skip, slab_bytes), consume, layout)

    hidden = _swin_hidden(enc.swinViT, x, lambda block, t: basic(block, t))
    dec4 = project(5, basic(enc.encoder10, hidden[4]))
    hidden[4] = None
    hid3 = project(4, hidden[3])
    hidden[3] = None
    y = up(dec.decoder5, dec4, hid3)
    del dec4, hid3
    skip = project(3, basic(enc.encoder4, hidden[2]))
    hidden[2] = None
    y = up(dec.decoder4, y, skip)
    skip = project(2, basic(enc.encoder3, hidden[1]))
    hidden[1] = None
    y = up(dec.decoder3, y, skip)
    skip = project(1, basic(enc.encoder2, hidden[0]))
    hidden[0] = None
    y = up(dec.decoder2, y, skip)
    del skip
    if dec.project_dims:  # project enc0 slab by slab as encoder1 produces it
        proj = dec.proj_enc0
        enc0 = torch.empty((1, proj.out_channels, *x.shape[2:]), dtype=y.dtype, device=x.device)

        def keep_projected(start: int, stop: int, rows: torch.Tensor) -> None:
            enc0[:, :, start:stop] = proj(rows)

        basic(enc.encoder1, x, keep_projected)
    else:
        enc0 = basic(enc.encoder1, x)
    head = only_conv(dec.out.conv)
    if out is None:
        out = torch.empty((batch, head.out_channels, *x.shape[2:]), dtype=y.dtype, device=x.device)
    logits = out[item:item + 1]

    def to_logits(start: int, stop: int, rows: torch.Tensor) -> None:
        logits[:, :, start:stop] = conv1x1(rows, head.weight, head.bias, _channels_last(rows))

    up(dec.decoder1, y, enc0, to_logits)
    return out

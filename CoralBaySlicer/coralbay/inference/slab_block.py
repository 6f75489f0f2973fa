"""One residual convolution block of the segmentation network, computed slab by slab.

Why its own module: the lean forward (`lean_forward`) streams every `UnetResBlock` the same way,
whatever feeds it: a block is three passes over slabs of rows along the first axis (conv1 with
per-slab statistics merged in float64; norm1 + LeakyReLU + conv2 written back over conv1's output
with a one-row halo; norm2 + residual + LeakyReLU), so one buffer of the block's output size is
all it holds besides its input. Its input is anything with `depth`, `first_pass` and
`add_shortcut_` (`BlockInput`): a tensor's rows here (`PlainInput`), or an up-block's upsampled
input that is never built (`folded_upsample.UpsampledInput`).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

Rows = Callable[[int, int], torch.Tensor]        # rows [lo, hi) of a (1, C, D, H, W) input
Consumer = Callable[[int, int, torch.Tensor], None]  # takes output rows [start, stop)


def only_conv(module: nn.Module) -> nn.Module:
    """The single Conv3d/ConvTranspose3d inside MONAI's `Convolution` wrapper."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    others = [m for m in module.modules() if m is not module and not isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    if len(convs) != 1 or others:
        raise NotImplementedError("not a plain convolution")
    return convs[0]


CHANNELS_LAST = torch.channels_last_3d


class BlockInput(Protocol):
    """What a block's three passes read from its input (`PlainInput`, `UpsampledInput`)."""

    depth: int

    def first_pass(self, plan: "ResBlockPlan", start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def add_shortcut_(self, out: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int) -> None: ...


def _channel_sums(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, per-channel sum, per-channel sum of squares) of a (1, C, d, h, w) slab.

    Why not `var_mean`: its Welford reduction is about 4x slower than plain sums on this CPU.
    The sums are float32 per row plane (PyTorch's cascade sum), combined in float64.
    """
    channels = x.shape[1]
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous():
        flat = x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[3] * x.shape[4], channels)
        dim = 1
    else:
        flat = x.transpose(0, 1).reshape(channels, -1, x.shape[3] * x.shape[4]).transpose(0, 1)
        dim = 2
    sums = flat.sum(dim).double().sum(0)
    squares = (flat * flat).sum(dim).double().sum(0)  # 2.3x faster than vector_norm over a strided dim
    return x.shape[0] * x[0, 0].numel(), sums, squares


class _Stats:
    """Per-channel mean and variance of a tensor seen slab by slab.

    Each slab gives (count, sum, sum of squares) (`_channel_sums`); slabs are merged in float64
    with Chan's pairwise formula, so the whole-window statistics match instance norm's to float
    rounding.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None  # sum of squared deviations from the mean

    def add(self, x: torch.Tensor) -> None:
        n, sums, squares = _channel_sums(x)
        mean = sums / n
        m2 = (squares - sums * mean).clamp_min(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def shift_scale(self, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) such that norm(x) == x * a + b, per channel, in float64."""
        mean = self.mean
        var = self.m2 / self.count
        a = torch.rsqrt(var + norm.eps)
        b = -mean * a
        if norm.affine:
            a, b = a * norm.weight.double(), b * norm.weight.double() + norm.bias.double()
        return a, b


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape(1, -1, 1, 1, 1)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (1, C, d, h, w) tensor as its (voxels, C) matrix (a view)."""
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])


def _check_norm(norm: nn.Module) -> None:
    if not isinstance(norm, nn.InstanceNorm3d) or norm.track_running_stats:
        raise NotImplementedError("not a plain instance norm")


class ResBlockPlan:
    """The pieces of one `UnetResBlock` (3x3x3 stride-1 convs, instance norms, LeakyReLU)."""

    def __init__(self, block: UnetResBlock) -> None:
        self.conv1, self.conv2 = only_conv(block.conv1), only_conv(block.conv2)
        for conv in (self.conv1, self.conv2):
            if tuple(conv.kernel_size) != (3, 3, 3) or tuple(conv.stride) != (1, 1, 1) \
                    or tuple(conv.padding) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1:
                raise NotImplementedError("only 3x3x3 stride-1 convolutions are streamed")
        self.conv3 = only_conv(block.conv3) if hasattr(block, "conv3") else None
        if self.conv3 is not None and (tuple(self.conv3.kernel_size) != (1, 1, 1) or tuple(self.conv3.stride) != (1, 1, 1)):
            raise NotImplementedError("only a 1x1x1 stride-1 residual convolution is streamed")
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.norm3 = getattr(block, "norm3", None)
        for norm in (self.norm1, self.norm2) + ((self.norm3,) if self.norm3 is not None else ()):
            _check_norm(norm)
        if not isinstance(block.lrelu, nn.LeakyReLU):
            raise NotImplementedError("only LeakyReLU is streamed")
        self.slope = float(block.lrelu.negative_slope)
        self.out_channels = self.conv1.out_channels

    def run(self, inputs: BlockInput, slab: int, consume: Consumer | None = None,
            channels_last: bool = False) -> torch.Tensor | None:
        """The block's output for `inputs`; to `consume` slab by slab, or whole.

        `channels_last`: run in channels-last layout (the output too); the input may be in either."""
        layout = CHANNELS_LAST if channels_last else torch.contiguous_format
        depth = inputs.depth
        w2 = self.conv2.weight.contiguous(memory_format=layout)
        spans = [(s, min(s + slab, depth)) for s in range(0, depth, slab)]
        buffer: torch.Tensor | None = None
        first, residual = _Stats(), _Stats()
        for start, stop in spans:  # pass 1: conv1 (and conv3's statistics)
            out, shortcut = inputs.first_pass(self, start, stop)
            if buffer is None:
                buffer = torch.empty((1, out.shape[1], depth, *out.shape[3:]), dtype=out.dtype,
                                     device=out.device, memory_format=layout)
            buffer[:, :, start:stop] = out
            first.add(out)
            if shortcut is not None:
                residual.add(shortcut)
            del out, shortcut
        assert buffer is not None
        a1, b1 = (_per_channel(v, buffer) for v in first.shift_scale(self.norm1))
        second = _Stats()
        # pass 2: norm1, LeakyReLU, conv2, over conv1's output in place; `work` holds the
        # activated rows [start - 1, stop + 1) of a slab (zero rows at the volume edges)
        work = torch.empty((1, buffer.shape[1], min(slab, depth) + 2, *buffer.shape[3:]), dtype=buffer.dtype,
                           device=buffer.device, memory_format=layout)
        work[:, :, 0].zero_()
        for start, stop in spans:
            hi = min(stop + 1, depth)
            count = hi - start
            act = work[:, :, 1:1 + count]
            torch.addcmul(b1, buffer[:, :, start:hi], a1, out=act)
            F.leaky_relu_(act, self.slope)
            if hi == stop:
                work[:, :, 1 + count].zero_()
            out = F.conv3d(work[:, :, :stop - start + 2], w2, self.conv2.bias, padding=(0, 1, 1))
            second.add(out)
            buffer[:, :, start:stop] = out
            del out
            work[:, :, 0] = work[:, :, stop - start]  # activated row stop - 1: the next slab's halo
        del work
        a2, b2 = second.shift_scale(self.norm2)
        w3 = None
        if self.conv3 is not None:  # norm3 folded into conv3: its weights scaled, its shift into b2's
            a3, shift3 = residual.shift_scale(self.norm3)
            w3 = (self.conv3.weight.double() * a3.reshape(-1, 1, 1, 1, 1)).to(buffer.dtype)
            b2 = b2 + shift3 + (0 if self.conv3.bias is None else self.conv3.bias.double() * a3)
        a2, b2 = _per_channel(a2, buffer), _per_channel(b2, buffer)
        for start, stop in spans:  # pass 3: norm2 + residual, LeakyReLU
            out = buffer[:, :, start:stop]
            torch.addcmul(b2, out, a2, out=out)
            inputs.add_shortcut_(out, w3, start, stop)
            F.leaky_relu_(out, self.slope)
            if consume is not None:
                consume(start, stop, out)
        if consume is not None:
            return None
        return buffer


def conv3x3(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor, lo: int, hi: int,
             start: int, stop: int) -> torch.Tensor:
    """Output rows [start, stop) of a 3x3x3 conv, from input rows [lo, hi) (the output rows
    plus their one-row halo, cut at the volume edges). At an edge the convolution pads the
    depth axis itself and one surplus output row is dropped, instead of copying the slab."""
    conv = _one_channel_conv if rows.shape[1] == 1 and _ONEDNN_ONE_CHANNEL and rows.device.type == "cpu" \
        and rows.dtype == torch.float32 else F.conv3d
    if lo == start - 1 and hi == stop + 1:
        return conv(rows, weight, bias, padding=(0, 1, 1))
    out = conv(rows, weight, bias, padding=1)  # output k is centred on input row lo + k
    return out[:, :, start - lo:stop - lo]


# PyTorch sends a one-channel input (encoder1's conv1 on the CT) to its own slow_conv3d; oneDNN's
# kernel called directly took 7.5 against 14 ms per slab of 9 rows at 96^2 (one thread).
_ONEDNN_ONE_CHANNEL = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def _one_channel_conv(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      padding: int | tuple[int, int, int]) -> torch.Tensor:
    pad = (padding,) * 3 if isinstance(padding, int) else padding
    return torch.mkldnn_convolution(rows.contiguous(), weight.contiguous(), bias, pad, (1, 1, 1), (1, 1, 1), 1)


def conv1x1(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return F.conv3d(rows, weight, bias)
    matrix = weight.reshape(weight.shape[0], -1).t()
    flat = _pixels(rows)
    out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return out.reshape(1, *rows.shape[2:], -1).permute(0, 4, 1, 2, 3)


def add_conv1x1_(out: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor) -> None:
    """out += conv1x1(rows, weight), in place (a matrix product into the pixels when channels-last)."""
    if out.is_contiguous(memory_format=CHANNELS_LAST) and rows.is_contiguous(memory_format=CHANNELS_LAST):
        _pixels(out).addmm_(_pixels(rows), weight.reshape(weight.shape[0], -1).t())
    else:
        out.add_(F.conv3d(rows, weight))


class PlainInput:
    """A block's input given by its rows (a tensor's, or computed on demand)."""

    def __init__(self, source: Rows, depth: int, channels_last: bool) -> None:
        self.source, self.depth, self.channels_last = source, depth, channels_last
        self.layout = CHANNELS_LAST if channels_last else torch.contiguous_format

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.source(lo, hi).contiguous(memory_format=self.layout)

    def first_pass(self, plan: ResBlockPlan, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """conv1's output rows [start, stop) and, when the block has one, conv3's (with bias)."""
        lo, hi = max(start - 1, 0), min(stop + 1, self.depth)
        rows = self.rows(lo, hi)
        out = conv3x3(plan.conv1.weight.contiguous(memory_format=self.layout), plan.conv1.bias, rows, lo, hi,
                       start, stop)
        shortcut = None
        if plan.conv3 is not None:
            shortcut = conv1x1(rows[:, :, start - lo:stop - lo], plan.conv3.weight, plan.conv3.bias,
                                self.channels_last)
        return out, shortcut

    def add_shortcut_(self, out: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int) -> None:
        """out += the residual path over rows [start, stop): the rows, or conv3 (bias-free) of them."""
        rows = self.rows(start, stop)
        if weight is None:
            out.add_(rows)
        else:
            add_conv1x1_(out, rows, weight)

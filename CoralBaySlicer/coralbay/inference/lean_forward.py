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
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import nn

from coralbay.model.build import SegmentationNetwork

# Bytes of one slab of a block's widest tensor: about 4 rows of decoder1's 96-channel input at
# U96B (96^2 x 96 x 4 bytes per row), a whole 24^3 map in one slab. Fewer, larger calls cost less
# on a CPU shared with other work (each call waits for both threads); more rows held more memory
# (measured at U96B, one window: 16 MB 545 MB peak, 24 MB 600 MB, 8 rows 559 MB).
CPU_SLAB_BYTES = 16 * 2 ** 20
ACCELERATOR_SLAB_BYTES = 512 * 2 ** 20  # on a GPU fewer, larger kernels are cheaper

Rows = Callable[[int, int], torch.Tensor]        # rows [lo, hi) of a (1, C, D, H, W) input
Consumer = Callable[[int, int, torch.Tensor], None]  # takes output rows [start, stop)


def _only_conv(module: nn.Module) -> nn.Module:
    """The single Conv3d/ConvTranspose3d inside MONAI's `Convolution` wrapper."""
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    others = [m for m in module.modules() if m is not module and not isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    if len(convs) != 1 or others:
        raise NotImplementedError("not a plain convolution")
    return convs[0]


CHANNELS_LAST = torch.channels_last_3d
# Blocks whose rows have at least this many voxels (H x W) run channels-last: oneDNN's 3x3x3
# convolution is about 1.3x faster that way at 96^2 and 48^2 planes, 1.15-1.3x at 24^2 (96-192
# channels), even at 12^2 and slower at 6^2 (384 channels; measured on the 2-core AVX-512 CPU,
# see docs/benchmarks.md).
CHANNELS_LAST_MIN_PLANE = 24 * 24
# Up-blocks whose fine planes have at least this many voxels fold the transposed convolution into
# conv1 (`_UpsampledInput`): the fold's weights grow with channels squared, its savings with the
# map, so only the large, shallow maps (decoder1 and decoder2 at U96B) gain.
FOLD_MIN_PLANE = 48 * 48


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


class _ResBlockPlan:
    """The pieces of one `UnetResBlock` (3x3x3 stride-1 convs, instance norms, LeakyReLU)."""

    def __init__(self, block: UnetResBlock) -> None:
        self.conv1, self.conv2 = _only_conv(block.conv1), _only_conv(block.conv2)
        for conv in (self.conv1, self.conv2):
            if tuple(conv.kernel_size) != (3, 3, 3) or tuple(conv.stride) != (1, 1, 1) \
                    or tuple(conv.padding) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1:
                raise NotImplementedError("only 3x3x3 stride-1 convolutions are streamed")
        self.conv3 = _only_conv(block.conv3) if hasattr(block, "conv3") else None
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

    def run(self, inputs: "_PlainInput | _UpsampledInput", slab: int, consume: Consumer | None = None,
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


def _conv3x3(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor, lo: int, hi: int,
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


def _conv1x1(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return F.conv3d(rows, weight, bias)
    matrix = weight.reshape(weight.shape[0], -1).t()
    flat = _pixels(rows)
    out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return out.reshape(1, *rows.shape[2:], -1).permute(0, 4, 1, 2, 3)


def _add_conv1x1_(out: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor) -> None:
    """out += conv1x1(rows, weight), in place (a matrix product into the pixels when channels-last)."""
    if out.is_contiguous(memory_format=CHANNELS_LAST) and rows.is_contiguous(memory_format=CHANNELS_LAST):
        _pixels(out).addmm_(_pixels(rows), weight.reshape(weight.shape[0], -1).t())
    else:
        out.add_(F.conv3d(rows, weight))


class _PlainInput:
    """A block's input given by its rows (a tensor's, or computed on demand)."""

    def __init__(self, source: Rows, depth: int, channels_last: bool) -> None:
        self.source, self.depth, self.channels_last = source, depth, channels_last
        self.layout = CHANNELS_LAST if channels_last else torch.contiguous_format

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.source(lo, hi).contiguous(memory_format=self.layout)

    def first_pass(self, plan: _ResBlockPlan, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """conv1's output rows [start, stop) and, when the block has one, conv3's (with bias)."""
        lo, hi = max(start - 1, 0), min(stop + 1, self.depth)
        rows = self.rows(lo, hi)
        out = _conv3x3(plan.conv1.weight.contiguous(memory_format=self.layout), plan.conv1.bias, rows, lo, hi,
                       start, stop)
        shortcut = None
        if plan.conv3 is not None:
            shortcut = _conv1x1(rows[:, :, start - lo:stop - lo], plan.conv3.weight, plan.conv3.bias,
                                self.channels_last)
        return out, shortcut

    def add_shortcut_(self, out: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int) -> None:
        """out += the residual path over rows [start, stop): the rows, or conv3 (bias-free) of them."""
        rows = self.rows(start, stop)
        if weight is None:
            out.add_(rows)
        else:
            _add_conv1x1_(out, rows, weight)


# Per axis, parity p of a fine voxel and tap t of the 2-tap coarse kernel: the (k, s) pairs of the
# 3x3x3 conv's tap k (0, 1, 2 = fine offset -1, 0, +1) and the transposed conv's sub-voxel s that
# meet there. Fine voxel 2i+p reads fine 2i+p-1 .. 2i+p+1, i.e. coarse (i-1, i) for p = 0
# (sub-voxels 1 | 0, 1) and coarse (i, i+1) for p = 1 (sub-voxels 0, 1 | 0).
_FOLD_PAIRS = {(0, 0): ((0, 1),), (0, 1): ((1, 0), (2, 1)), (1, 0): ((0, 0), (1, 1)), (1, 1): ((2, 0),)}
_PARITIES = tuple(itertools.product(range(2), repeat=3))


def _fold_selection() -> torch.Tensor:
    """S[p, t, k, s] = 1 where tap k of the 3x3x3 conv reads sub-voxel s through coarse tap t."""
    select = torch.zeros(2, 2, 3, 2, dtype=torch.float64)
    for (parity, tap), pairs in _FOLD_PAIRS.items():
        for k, sub in pairs:
            select[parity, tap, k, sub] = 1
    return select


def _check_up_block(transp: nn.Module, low: torch.Tensor, skip: torch.Tensor) -> None:
    """What both up-block inputs assume: a kernel-2 stride-2 transposed conv, a skip twice as large."""
    if tuple(transp.kernel_size) != (2, 2, 2) or tuple(transp.stride) != (2, 2, 2) \
            or tuple(transp.padding) != (0, 0, 0) or tuple(transp.output_padding) != (0, 0, 0) \
            or transp.groups != 1 or tuple(transp.dilation) != (1, 1, 1):
        raise NotImplementedError("only a kernel-2 stride-2 transposed convolution is streamed")
    if tuple(skip.shape[2:]) != tuple(2 * s for s in low.shape[2:]):
        raise NotImplementedError("the skip is not twice the upsampled input's size")


class _UpsampledInput:
    """cat(transp_conv(low), skip), the input of an up-block's residual block, never built.

    Why: a 3x3x3 convolution over a kernel-2 stride-2 transposed convolution's output is itself
    a convolution on the coarse grid: for each of the 8 parities of the fine voxel, a 2x2x2
    kernel over the coarse input (the two kernels multiplied out, `_FOLD_PAIRS`). That costs
    8 instead of 27 taps per fine voxel on the up-sampled half of conv1 (decoder1 at U96B: 81 of
    the window's 689 GFLOP saved), and neither the up-sampled rows nor the concatenation with
    the skip are ever written. The transposed convolution's bias rides on an extra input channel
    of ones inside the volume, so the zero padding at the volume's border stays exact. The
    1x1x1 conv3 over the up-sampled half folds the same way (one matrix product per coarse voxel).
    """

    def __init__(self, transp: nn.Module, low: torch.Tensor, skip: torch.Tensor, plan: _ResBlockPlan,
                 channels_last: bool) -> None:
        _check_up_block(transp, low, skip)
        self.low, self.skip, self.depth = low, skip, skip.shape[2]
        self.channels_last = channels_last
        self.layout = CHANNELS_LAST if channels_last else torch.contiguous_format
        self.up_channels = transp.out_channels
        # (in [+ 1], up, 2, 2, 2): the transposed conv's weights, and its bias as a ones channel's
        self.with_bias = transp.bias is not None
        self.transp = transp.weight.double()
        if self.with_bias:
            bias = transp.bias.double().reshape(1, -1, 1, 1, 1).expand(1, -1, 2, 2, 2)
            self.transp = torch.cat([self.transp, bias])
        conv1 = plan.conv1
        # the fold as matrices (8 taps x in, 4 parities x out), one per depth parity: an im2col
        # product beat oneDNN's and PyTorch's own 2x2x2 convolution (15 against 30 ms per slab)
        folded = _cached_fold(transp, conv1, self.transp).to(low.dtype)
        out_channels, taps_in = conv1.out_channels, 8 * self.transp.shape[0]
        matrix = folded.reshape(8, out_channels, -1, 8).permute(3, 2, 0, 1).reshape(taps_in, 8 * out_channels)
        self.conv1_folded = [matrix[:, d * 4 * out_channels:(d + 1) * 4 * out_channels].contiguous() for d in range(2)]
        self.conv1_skip = conv1.weight[:, self.up_channels:].contiguous(memory_format=self.layout)
        self.conv1_bias = conv1.bias
        self._conv3_folds: dict[tuple, torch.Tensor] = {}

    def _skip_rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.skip[:, :, lo:hi].contiguous(memory_format=self.layout)

    def first_pass(self, plan: _ResBlockPlan, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo, hi = max(start - 1, 0), min(stop + 1, self.depth)
        out = _conv3x3(self.conv1_skip, self.conv1_bias, self._skip_rows(lo, hi), lo, hi, start, stop)
        self._add_folded_up_conv_(out, start, stop)
        shortcut = None
        if plan.conv3 is not None:
            shortcut = _conv1x1(self._skip_rows(start, stop), plan.conv3.weight[:, self.up_channels:],
                                plan.conv3.bias, self.channels_last)
            self._add_up_conv1x1_(shortcut, plan.conv3.weight, start, stop)
        return out, shortcut

    def _add_folded_up_conv_(self, out: torch.Tensor, start: int, stop: int) -> None:
        """out += conv1's up-sampled half over fine rows [start, stop), from the coarse rows."""
        a, b = start // 2, (stop + 1) // 2
        channels, (low_d, low_h, low_w) = self.low.shape[1], self.low.shape[2:]
        inputs = channels + self.with_bias
        # coarse rows a-1 .. b with a one-voxel zero border (voxels x channels), plus the ones channel
        padded = self.low.new_zeros((b - a + 2, low_h + 2, low_w + 2, inputs))
        r0, r1 = max(a - 1, 0), min(b + 1, low_d)
        inside = padded[r0 - a + 1:r1 - a + 1, 1:-1, 1:-1]
        inside[..., :channels] = self.low[0, :, r0:r1].permute(1, 2, 3, 0)
        if self.with_bias:
            inside[..., channels] = 1
        # im2col: output voxel (r, j, k) of the padded grid reads (r + td, j + th, k + tw)
        rows, plane = b - a + 1, (low_h + 1) * (low_w + 1)
        columns = padded.new_empty((rows, low_h + 1, low_w + 1, 8, inputs))
        for tap, (td, th, tw) in enumerate(_PARITIES):
            columns[:, :, :, tap] = padded[td:td + rows, th:th + low_h + 1, tw:tw + low_w + 1]
        columns = columns.reshape(rows * plane, -1)
        channels_out = out.shape[1]
        for pd in range(2):  # depth parity pd reads output rows pd .. pd + b - a - 1
            first = start + (pd - start) % 2
            count = len(range(first, stop, 2))
            if not count:
                continue
            row = (first - pd) // 2 - a + pd
            product = columns[row * plane:(row + count) * plane] @ self.conv1_folded[pd]
            product = product.reshape(count, low_h + 1, low_w + 1, 4, channels_out)
            for index, (ph, pw) in enumerate(itertools.product(range(2), repeat=2)):
                source = product[:, ph:ph + low_h, pw:pw + low_w, index].permute(3, 0, 1, 2)[None]
                out[:, :, first - start::2, ph::2, pw::2].add_(source)

    def _add_up_conv1x1_(self, out: torch.Tensor, weight: torch.Tensor, start: int, stop: int) -> None:
        """out += conv1x1 (weight's up-sampled half) of the up-sampled rows, from the coarse rows."""
        a, b = start // 2, (stop + 1) // 2
        key = (weight.data_ptr(), tuple(weight.shape))  # pass 1's conv3 weights, pass 3's scaled ones: both alive
        per_parity = self._conv3_folds.get(key)
        if per_parity is None:  # (in + 1, 8 x out): the 1x1 conv of each parity's up-sampled voxel
            w = weight.reshape(weight.shape[0], -1)[:, :self.up_channels].double()
            per_parity = torch.einsum("iuxyz,ou->ixyzo", self.transp, w).reshape(self.transp.shape[0], -1)
            per_parity = self._conv3_folds[key] = per_parity.to(out.dtype)
        low = self.low[:, :, a:b]
        pixels = low.permute(0, 2, 3, 4, 1).reshape(-1, low.shape[1])
        if self.with_bias:  # the last row: the ones channel's, i.e. the bias
            coarse = torch.addmm(per_parity[-1], pixels, per_parity[:-1])
        else:
            coarse = pixels @ per_parity
        coarse = coarse.reshape(1, *low.shape[2:], -1).permute(0, 4, 1, 2, 3)
        _interleave_add_(out, coarse, start, stop, a, shifted=False)

    def add_shortcut_(self, out: torch.Tensor, weight: torch.Tensor | None, start: int, stop: int) -> None:
        if weight is None:
            raise NotImplementedError("an up-block's residual block always has conv3 (its input is wider)")
        _add_conv1x1_(out, self._skip_rows(start, stop), weight[:, self.up_channels:].contiguous())
        self._add_up_conv1x1_(out, weight, start, stop)


def _fold(weight: torch.Tensor, transp: torch.Tensor) -> torch.Tensor:
    """(8 x out, in, 2, 2, 2): a 3x3x3 conv (out, up, 3, 3, 3) over a kernel-2 stride-2 transposed
    conv (in, up, 2, 2, 2) as one 2x2x2 kernel on the coarse grid per fine parity (float64)."""
    select = _fold_selection()
    parts = []
    for pd, ph, pw in _PARITIES:  # one parity at a time: the intermediate stays 64 x out x up
        taps = torch.einsum("tkx,uly,vmz->tuvklmxyz", select[pd], select[ph], select[pw])
        per_tap = torch.einsum("tuvklmxyz,ocklm->tuvxyzoc", taps, weight.double())
        parts.append(torch.einsum("tuvxyzoc,icxyz->oituv", per_tap, transp))
    return torch.cat(parts)


def _cached_fold(transp: nn.Module, conv1: nn.Module, transp_with_bias: torch.Tensor) -> torch.Tensor:
    """`_fold` of an up-block, kept on its transposed conv between forwards (rebuilt when either
    weight changes in place, as training does)."""
    params = [conv1.weight, transp.weight] + ([transp.bias] if transp.bias is not None else [])
    key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in params)
    cached = transp.__dict__.get("_lean_fold")
    if cached is not None and cached[0] == key:
        return cached[1]
    folded = _fold(conv1.weight[:, :transp.out_channels], transp_with_bias)
    transp.__dict__["_lean_fold"] = (key, folded)
    return folded


def _interleave_add_(out: torch.Tensor, coarse: torch.Tensor, start: int, stop: int, a: int,
                     shifted: bool) -> None:
    """out (fine rows [start, stop)) += coarse's 8 parity blocks, each at its parity's fine voxels.

    coarse: (1, 8 * C, rows, h', w') over coarse rows from `a`; `shifted`: parity p's values sit
    one coarse voxel further along each axis where p is 1 (the folded conv's padded output)."""
    channels = out.shape[1]
    low_h, low_w = out.shape[3] // 2, out.shape[4] // 2
    for index, (pd, ph, pw) in enumerate(_PARITIES):
        first = start + (pd - start) % 2
        count = len(range(first, stop, 2))
        if not count:
            continue
        row = (first - pd) // 2 - a + (pd if shifted else 0)
        dh, dw = (ph, pw) if shifted else (0, 0)
        source = coarse[:, index * channels:(index + 1) * channels, row:row + count, dh:dh + low_h, dw:dw + low_w]
        out[:, :, first - start::2, ph::2, pw::2].add_(source)


def _res_block(block: nn.Module) -> UnetResBlock:
    if isinstance(block, UnetrBasicBlock):
        block = block.layer
    if not isinstance(block, UnetResBlock):
        raise NotImplementedError(f"{type(block).__name__} is not streamed")
    return block


def _rows_of(x: torch.Tensor) -> Rows:
    return lambda lo, hi: x[:, :, lo:hi]


def _upsampled_rows(transp: nn.Module, inp: torch.Tensor, skip: torch.Tensor, channels_last: bool = False) -> Rows:
    """Rows of cat(transp_conv(inp), skip) for a kernel-2 stride-2 transposed convolution.

    The transposed convolution is one matrix product per slab (each coarse voxel gives a 2x2x2
    block of fine voxels), written with the skip straight into one channels-last tensor: no
    separate upsampled tensor and no concatenation copy (PyTorch's own kernel for it is not
    oneDNN's and was 1.7x slower)."""
    _check_up_block(transp, inp, skip)
    cin, cup = transp.in_channels, transp.out_channels
    matrix = transp.weight.permute(0, 2, 3, 4, 1).reshape(cin, -1)  # (in, 2 x 2 x 2 x out)
    bias = None if transp.bias is None else transp.bias.repeat(8)

    def rows(lo: int, hi: int) -> torch.Tensor:
        a, b = lo // 2, (hi + 1) // 2
        low = inp[:, :, a:b]
        d, h, w = low.shape[2:]
        flat = low.permute(0, 2, 3, 4, 1).reshape(-1, cin)
        up = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
        both = torch.empty((1, 2 * d, 2 * h, 2 * w, cup + skip.shape[1]), dtype=up.dtype, device=up.device)
        fine, coarse = both[0, ..., :cup].view(d, 2, h, 2, w, 2, cup), up.view(d, h, w, 2, 2, 2, cup)
        for i, j, k in itertools.product(range(2), repeat=3):  # 2.5x faster than one 7-d copy
            fine[:, i, :, j, :, k].copy_(coarse[:, :, :, i, j, k])
        both[..., cup:] = skip[:, :, 2 * a:2 * b].permute(0, 2, 3, 4, 1)
        out = both.permute(0, 4, 1, 2, 3)[:, :, lo - 2 * a:hi - 2 * a]
        return out if channels_last else out.contiguous()

    return rows


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
            _ResBlockPlan(_res_block(block))
        for up in (dec.decoder1, dec.decoder2, dec.decoder3, dec.decoder4, dec.decoder5):
            if not isinstance(up, UnetrUpBlock):
                return False
            _ResBlockPlan(_res_block(up.conv_block))
            _only_conv(up.transp_conv)
        if not isinstance(dec.out, UnetOutBlock) or _only_conv(dec.out.conv).kernel_size != (1, 1, 1):
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


def _slab_rows(plan: _ResBlockPlan, like: torch.Tensor, slab_bytes: int) -> int:
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
        plan = _ResBlockPlan(_res_block(block))
        layout = _channels_last(t)
        return plan.run(_PlainInput(_rows_of(t), t.shape[2], layout), _slab_rows(plan, t, slab_bytes), consume, layout)

    def up(block: UnetrUpBlock, t: torch.Tensor, skip: torch.Tensor,
           consume: Consumer | None = None) -> torch.Tensor | None:
        layout = _channels_last(skip)
        plan = _ResBlockPlan(_res_block(block.conv_block))
        transp = _only_conv(block.transp_conv)
        if skip.shape[3] * skip.shape[4] >= FOLD_MIN_PLANE:
            inputs: _PlainInput | _UpsampledInput = _UpsampledInput(transp, t, skip, plan, layout)
        else:
            inputs = _PlainInput(_upsampled_rows(transp, t, skip, layout), skip.shape[2], layout)
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
    head = _only_conv(dec.out.conv)
    if out is None:
        out = torch.empty((batch, head.out_channels, *x.shape[2:]), dtype=y.dtype, device=x.device)
    logits = out[item:item + 1]

    def to_logits(start: int, stop: int, rows: torch.Tensor) -> None:
        logits[:, :, start:stop] = _conv1x1(rows, head.weight, head.bias, _channels_last(rows))

    up(dec.decoder1, y, enc0, to_logits)
    return out

"""An up-block's input, cat(transp_conv(low), skip), for `slab_block` without building it.

Why its own module: a kernel-2 stride-2 transposed convolution followed by a 3x3x3 convolution is
one 2x2x2 convolution per fine-voxel parity on the coarse grid (`UpsampledInput`, the fold), and
where that does not pay, the upsampled rows are written with the skip straight into one
channels-last tensor (`upsampled_rows`). Both are exact; `lean_forward` picks one per block.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from coralbay.inference.slab_block import (CHANNELS_LAST, ResBlockPlan, Rows, add_conv1x1_, conv1x1,
                                           conv3x3)

# Up-blocks whose fine planes have at least this many voxels fold the transposed convolution into
# conv1 (`UpsampledInput`): the fold's weights grow with channels squared, its savings with the
# map, so only the large, shallow maps (decoder1 and decoder2 at U96B) gain.
FOLD_MIN_PLANE = 48 * 48

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


class UpsampledInput:
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

    def __init__(self, transp: nn.Module, low: torch.Tensor, skip: torch.Tensor, plan: ResBlockPlan,
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

    def first_pass(self, plan: ResBlockPlan, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo, hi = max(start - 1, 0), min(stop + 1, self.depth)
        out = conv3x3(self.conv1_skip, self.conv1_bias, self._skip_rows(lo, hi), lo, hi, start, stop)
        self._add_folded_up_conv_(out, start, stop)
        shortcut = None
        if plan.conv3 is not None:
            shortcut = conv1x1(self._skip_rows(start, stop), plan.conv3.weight[:, self.up_channels:],
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
        add_conv1x1_(out, self._skip_rows(start, stop), weight[:, self.up_channels:].contiguous())
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


def upsampled_rows(transp: nn.Module, inp: torch.Tensor, skip: torch.Tensor, channels_last: bool = False) -> Rows:
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

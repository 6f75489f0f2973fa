"""A faster, leaner inference forward for MONAI's Swin transformer, with the same weights and math.

Why: at CoralBay's widths most of a window's time goes to the windowed self-attention, and
MONAI's plain path (a) rebuilds the shifted-window mask, a (windows, tokens, tokens) tensor, on
every forward, (b) materialises the attention matrix and two copies of it (+bias, +mask,
softmax), and (c) in its optional scaled-dot-product path expands bias+mask to one full copy per
window and head. Here the mask is described once per grid shape as a few distinct patterns (a
shifted window's mask depends only on whether it lies in the last window row of each axis, so
there are at most 2^3 of them), windows are attended in pattern groups, `WINDOW_CHUNK` windows
per `scaled_dot_product_attention` call, with one small (heads, n, n) bias per group, so nothing
of size windows x heads x n x n, nor a whole-stage q/k/v, is ever built; the MLP runs over chunks
of tokens. The result equals MONAI's forward to float rounding
(tested), and the module tree and parameter names are untouched: the faster forwards are bound
to the module instances by `enable_fast_swin` and removed by `disable_fast_swin`.

Only inference uses it: with autograd enabled the modules fall back to MONAI's own forward.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import (BasicLayer, SwinTransformerBlock, WindowAttention,
                                            get_window_size, window_partition)
from monai.networks.blocks.mlp import MLPBlock
from torch import nn

MASKED = -100.0  # MONAI's value between tokens of different shifted regions
WINDOW_CHUNK = 64   # windows attended per call: qkv of 64 x 343 tokens (50 MB at F=192, stage 1)
TOKEN_CHUNK = 16384  # tokens per MLP call: a 4F-wide hidden layer of 50 MB at F=192


@dataclass(frozen=True)
class MaskPlan:
    """The shifted-window mask of one padded grid as distinct patterns.

    `patterns[i]` is an (n, n) additive mask (0 or -100), `windows[i]` the indices (within one
    batch item) of the windows that use it; `per_item` is the number of windows per batch item.
    """

    patterns: tuple[torch.Tensor, ...]
    windows: tuple[torch.Tensor, ...]
    per_item: int

    def groups(self, total_windows: int):
        """(pattern, window indices over the whole batch) for a batch of `total_windows`."""
        items = total_windows // self.per_item
        offsets = torch.arange(items, device=self.patterns[0].device)[:, None] * self.per_item
        for pattern, index in zip(self.patterns, self.windows):
            yield pattern, (offsets + index[None]).reshape(-1)


@lru_cache(maxsize=32)
def mask_plan(dims: tuple[int, int, int], window: tuple[int, int, int],
              shift: tuple[int, int, int], device: str = "cpu") -> MaskPlan:
    """The distinct shifted-window masks of a padded (d, h, w) token grid, kept on `device`.

    Region ids follow MONAI's `compute_mask` (three slabs per axis: before the last window, the
    last window's unshifted part, and its shifted part); two tokens of a window may attend to
    each other only when they carry the same region id.
    """
    regions = torch.zeros((1, *dims, 1))
    count = 0
    for sd in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for sh in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            for sw in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
                regions[:, sd, sh, sw, :] = count
                count += 1
    per_window = window_partition(regions, window).squeeze(-1)  # (windows, n)
    by_key: dict[tuple[int, ...], list[int]] = {}
    canonical: dict[tuple[int, ...], torch.Tensor] = {}
    for index, row in enumerate(per_window):
        labels = torch.unique(row, return_inverse=True)[1]  # region ids relabelled 0, 1, ...
        key = tuple(labels.tolist())
        by_key.setdefault(key, []).append(index)
        canonical.setdefault(key, labels)
    patterns = []
    for key in by_key:
        labels = canonical[key]
        different = labels[:, None] != labels[None, :]
        patterns.append(torch.where(different, MASKED, 0.0).to(torch.float32).to(device))
    windows = tuple(torch.tensor(v, dtype=torch.long, device=device) for v in by_key.values())
    return MaskPlan(tuple(patterns), windows, per_window.shape[0])


def _relative_bias(attn: WindowAttention, n: int) -> torch.Tensor:
    """The (heads, n, n) relative position bias of the first n tokens, as MONAI indexes it.

    Kept on the module between forwards (a gather of heads x n x n per block is otherwise
    redone for every window batch); rebuilt when the table changes (training updates it in place,
    which bumps its version)."""
    table = attn.relative_position_bias_table
    key = (n, table._version, table.data_ptr(), table.dtype)
    cached = attn.__dict__.get("_fast_swin_bias")
    if cached is not None and cached[0] == key:
        return cached[1]
    index = attn.relative_position_index[:n, :n].reshape(-1)
    bias = table[index].reshape(n, n, -1).permute(2, 0, 1).contiguous()
    attn.__dict__["_fast_swin_bias"] = (key, bias)
    return bias


@dataclass(frozen=True)
class WindowTokens:
    """Where each window token of a shifted-window block comes from, in a flat token grid.

    `tokens[w, t]` is the row (of a batch's flat (b x d x h x w [+ 1], c) tokens) that token t of
    window w reads: MONAI's pad + roll + `window_partition` as one index; padding tokens read the
    extra zero row at the end when `padded`. Written back through the same index, the attended
    tokens land where MONAI's `window_reverse` + roll + crop put them (each voxel is one token of
    exactly one window; padding tokens all go to that extra row, which is dropped).
    """

    tokens: torch.Tensor
    padded: bool


@lru_cache(maxsize=64)
def window_tokens(dims: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int],
                  batch: int, device: str = "cpu") -> WindowTokens:
    """The `WindowTokens` of a (d, h, w) grid for a batch of `batch` items."""
    padded_dims = [int(math.ceil(s / ws)) * ws for s, ws in zip(dims, window)]
    # padded, shifted position p reads padded position (p + shift) mod padded size (torch.roll by -shift)
    axes = [(torch.arange(p) + sh) % p for p, sh in zip(padded_dims, shift)]
    inside = [a < s for a, s in zip(axes, dims)]
    voxels = dims[0] * dims[1] * dims[2]
    flat = (axes[0][:, None, None] * dims[1] + axes[1][None, :, None]) * dims[2] + axes[2][None, None, :]
    valid = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    per_window = window_partition(flat[None, ..., None], window).squeeze(-1)  # (windows, n)
    valid = window_partition(valid[None, ..., None].to(torch.uint8), window).squeeze(-1).bool()
    items = torch.arange(batch)[:, None, None] * voxels
    tokens = torch.where(valid[None], per_window[None] + items, batch * voxels).reshape(-1, per_window.shape[1])
    return WindowTokens(tokens.to(device), bool((~valid).any()))


def _attend(self: WindowAttention, source: torch.Tensor, tokens: torch.Tensor, groups, out: torch.Tensor) -> None:
    """Windowed self-attention: window w's tokens are `source[tokens[w]]`, its result goes to
    `out[tokens[w]]`; windows attended in mask-pattern groups, `WINDOW_CHUNK` per call."""
    c = source.shape[-1]
    n = tokens.shape[1]
    heads = self.num_heads
    bias = _relative_bias(self, n)
    for pattern, index in groups:
        group_bias = (bias if pattern is None else bias + pattern.to(bias.dtype))[None]
        for chunk in index.split(WINDOW_CHUNK):  # bounded q, k, v and attention buffers
            rows = tokens[chunk]
            q, k, v = self.qkv(source[rows]).reshape(len(chunk), n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=group_bias.to(q.dtype), scale=self.scale)
            out[rows] = self.proj(attended.transpose(1, 2).reshape(len(chunk), n, c))


def _attention_forward(self: WindowAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    if torch.is_grad_enabled() or (mask is not None and not isinstance(mask, MaskPlan)):
        if isinstance(mask, MaskPlan):
            raise RuntimeError("fast Swin attention received a mask plan with autograd enabled")
        return WindowAttention.forward(self, x, mask)
    b, n, c = x.shape
    groups = [(None, torch.arange(b, device=x.device))] if mask is None else list(mask.groups(b))
    out = torch.empty_like(x)
    tokens = torch.arange(b * n, device=x.device).reshape(b, n)
    _attend(self, x.reshape(b * n, c), tokens, groups, out.view(b * n, c))
    return out


def _block_forward(self: SwinTransformerBlock, x: torch.Tensor, mask=None) -> torch.Tensor:
    """MONAI's `SwinTransformerBlock.forward` for 3D inputs without the copies around attention:
    pad, roll, window partition and their inverses are one gather and one scatter of tokens
    (`window_tokens`), straight from and into the flat token grid."""
    if torch.is_grad_enabled() or x.dim() != 5 or self.use_checkpoint or \
            (mask is not None and not isinstance(mask, MaskPlan)):
        return SwinTransformerBlock.forward(self, x, mask)
    b, d, h, w, c = x.shape
    window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
    if not any(shift):
        mask = None  # MONAI passes the layer's mask to every block; unshifted ones ignore it
    layout = window_tokens((d, h, w), tuple(window), tuple(shift), b, str(x.device))
    voxels = b * d * h * w
    normed = self.norm1(x).reshape(voxels, c)
    source = torch.cat([normed, normed.new_zeros(1, c)]) if layout.padded else normed
    attended = torch.empty_like(source)
    windows = layout.tokens.shape[0]
    groups = [(None, torch.arange(windows, device=x.device))] if mask is None else list(mask.groups(windows))
    _attend(self.attn, source, layout.tokens, groups, attended)
    if self.training:  # drop-path is random only in training mode
        x = x + self.drop_path(attended[:voxels].view(b, d, h, w, c))
        return x + self.forward_part2(x)
    x = attended[:voxels].view(b, d, h, w, c).add_(x)  # the residuals into our own buffers: no new tensors
    return self.forward_part2(x).add_(x)


def _mlp_forward(self: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """MONAI's `forward_part2` (norm2, MLP) over chunks of tokens: the 4x-wide hidden layer of
    the first stage (340 MB at F=192) is never held whole."""
    if torch.is_grad_enabled():
        return SwinTransformerBlock.forward_part2(self, x)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat)
    mlp = self.mlp
    direct = (not self.training and isinstance(mlp, MLPBlock) and isinstance(mlp.linear2, nn.Linear)
              and mlp.linear2.bias is not None)  # in eval the dropouts and drop-path are identities
    for start in range(0, flat.shape[0], TOKEN_CHUNK):
        stop = min(start + TOKEN_CHUNK, flat.shape[0])
        if direct:  # MLPBlock's forward with its last product written straight into `out`
            hidden = mlp.drop1(mlp.fn(mlp.linear1(self.norm2(flat[start:stop]))))
            torch.addmm(mlp.linear2.bias, hidden, mlp.linear2.weight.t(), out=out[start:stop])
        else:
            out[start:stop] = self.drop_path(self.mlp(self.norm2(flat[start:stop])))
    return out.reshape(x.shape)


def _layer_forward(self: BasicLayer, x: torch.Tensor) -> torch.Tensor:
    """MONAI's BasicLayer step for 3D inputs, with the cached mask plan instead of a dense mask."""
    if torch.is_grad_enabled() or x.dim() != 5 or getattr(self, "use_hyena", False):
        return BasicLayer.forward(self, x)
    b, _, d, h, w = x.shape
    window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
    padded = tuple(int(math.ceil(s / ws)) * ws for s, ws in zip((d, h, w), window))
    plan = mask_plan(padded, tuple(window), tuple(shift), str(x.device)) if any(shift) else None
    x = x.permute(0, 2, 3, 4, 1)
    for block in self.blocks:
        x = block(x, plan)
    x = x.reshape(b, d, h, w, -1)
    if self.downsample is not None:
        x = self.downsample(x)
    return x.permute(0, 4, 1, 2, 3)


def enable_fast_swin(network: nn.Module) -> int:
    """Bind the fast forwards to every Swin layer and attention module; returns how many."""
    changed = 0
    for module in network.modules():
        if isinstance(module, WindowAttention):
            module.forward = types.MethodType(_attention_forward, module)
            changed += 1
        elif isinstance(module, BasicLayer) and not getattr(module, "use_hyena", False):
            module.forward = types.MethodType(_layer_forward, module)
            changed += 1
        elif isinstance(module, SwinTransformerBlock):
            module.forward = types.MethodType(_block_forward, module)
            module.forward_part2 = types.MethodType(_mlp_forward, module)
            changed += 1
    return changed


def disable_fast_swin(network: nn.Module) -> None:
    """Back to MONAI's own forwards."""
    for module in network.modules():
        for name in ("forward", "forward_part2"):
            if isinstance(module, (WindowAttention, BasicLayer, SwinTransformerBlock)) and name in module.__dict__:
                del module.__dict__[name]


def fast_swin_enabled(network: nn.Module) -> bool:
    return any("forward" in m.__dict__ for m in network.modules() if isinstance(m, WindowAttention))

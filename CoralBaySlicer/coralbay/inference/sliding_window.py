"""Sliding-window evaluation of a network over a volume, with Gaussian blending.

Window placement (`coralbay.grid.windows`) and the blending weights (`compute_importance_map`) are
MONAI's, so with `skip_empty=False` and float32 accumulation the result equals
`monai.inferers.sliding_window_inference` (tested). Ours differs in what it avoids: windows that
hold only air (all inputs at the bottom of the HU window) are not evaluated, and the blended
output is produced slab by slab along the first axis (`blend_slabs`), so a caller that keeps
something smaller than per-class float logits (segmentation keeps 16-bit probabilities) never
holds the whole per-class volume. `sliding_window_logits` assembles the full volume for callers
that want it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from coralbay.grid.windows import WindowSettings, window_starts

ProgressCallback = Callable[[float, str], None]
BACKGROUND_LOGIT = 20.0  # channel 0's value where no evaluated window reaches (all others 0): confident background


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go on a (padded) volume."""

    padded_shape: tuple[int, int, int]
    padding: tuple[tuple[int, int], ...]  # (before, after) per axis
    slices: list[tuple[slice, slice, slice]]


def plan_windows(shape: Sequence[int], window: Sequence[int], overlap: float) -> WindowPlan:
    """Pad a volume smaller than the window (symmetrically) and place windows MONAI's way."""
    padding = []
    for size, win in zip(shape, window):
        diff = max(win - size, 0)
        padding.append((diff // 2, diff - diff // 2))
    padded = tuple(int(s + a + b) for s, (a, b) in zip(shape, padding))
    starts = [window_starts(p, int(w), overlap) for p, w in zip(padded, window)]
    slices = [tuple(slice(s, s + int(w)) for s, w in zip(corner, window)) for corner in itertools.product(*starts)]
    return WindowPlan(padded, tuple(padding), slices)  # type: ignore[arg-type]


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when supported (fp16 otherwise); nothing elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _batches(items: list, size: int, singles: int = 0) -> Iterator[list]:
    """Batches of `size`, after the first `singles` items one by one."""
    singles = min(singles, len(items))
    yield from ([item] for item in items[:singles])
    for start in range(singles, len(items), size):
        yield items[start:start + size]


@dataclass
class WindowRun:
    """The windows of one volume: the padded volume, where the windows go, which are evaluated."""

    plan: WindowPlan
    volume: torch.Tensor  # float32, padded to at least one window
    todo: list[tuple[slice, slice, slice]]  # the windows to evaluate, in MONAI's order

    def stats(self) -> dict:
        return {"windows_total": len(self.plan.slices), "windows_evaluated": len(self.todo)}


def plan_run(volume: np.ndarray | torch.Tensor, settings: WindowSettings, all_when_empty: bool = False) -> WindowRun:
    """Pad the volume, place the windows and drop those that hold only air (`skip_empty`).

    With `all_when_empty`, a volume with nothing but air still gets every window (a scan-level
    embedding needs at least one vector; a segmentation does not).
    """
    vol = torch.as_tensor(volume, dtype=torch.float32)
    plan = plan_windows(vol.shape, settings.size, settings.overlap)
    vol = _pad_volume(vol, plan)
    values = vol.numpy() if vol.device.type == "cpu" else vol   # numpy's max of a strided window is ~40x torch's
    todo = [s for s in plan.slices if not settings.skip_empty or float(values[s].max()) > settings.empty_below]
    return WindowRun(plan, vol, todo or (list(plan.slices) if all_when_empty else []))


def evaluate_windows(run: WindowRun, network: Callable[[torch.Tensor], torch.Tensor], settings: WindowSettings,
                     device: torch.device, progress: ProgressCallback | None = None, singles: int = 0
                     ) -> Iterator[tuple[list[tuple[slice, slice, slice]], torch.Tensor]]:
    """The one sliding-window loop: yield (windows, network outputs) batch by batch.

    Callers (blended logits, per-window embeddings) run it inside `window_context`, which must
    stay entered while they use the outputs. Progress is reported after the caller has taken
    each batch. The first `singles` windows go one by one (a caller timing the run by them).
    """
    done = 0
    for batch in _batches(run.todo, max(1, settings.batch_size), singles):
        inputs = torch.stack([run.volume[s] for s in batch])[:, None].to(device)
        yield batch, network(inputs)
        done += len(batch)
        if progress:
            progress(done / max(1, len(run.todo)), f"window {done}/{len(run.todo)}")


def window_context(device: torch.device, autocast: bool) -> contextlib.ExitStack:
    """Inference mode plus (on CUDA) autocast, for the whole of a sliding-window evaluation."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast_context(device, autocast))
    return stack


@dataclass
class Slab:
    """Blended network output for voxels [start, stop) along the first axis, all of the others."""

    start: int
    stop: int
    logits: torch.Tensor  # (C, stop - start, Y, Z) of the kept box, on the stitching device
    offset_yz: tuple[int, int] = (0, 0)  # where the kept box starts along Y and Z


def _pad_volume(vol: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    if not any(a or b for a, b in plan.padding):
        return vol
    pad = [p for pair in reversed(plan.padding) for p in pair]
    return torch.nn.functional.pad(vol[None, None], pad, mode="constant", value=0.0)[0, 0]


def _segment_bounds(plan: WindowPlan, window: Sequence[int]) -> list[int]:
    """Cut points along axis 0 where some window starts or ends: segments between them are
    covered by the same set of windows, so each can be finished as soon as its last window is in."""
    cuts = {0, plan.padded_shape[0]}
    for s in plan.slices:
        cuts.update((s[0].start, s[0].stop))
    return sorted(cuts)


def blend_slabs(
    volume: np.ndarray | torch.Tensor,
    network: Callable[[torch.Tensor], torch.Tensor],
    out_channels: int,
    settings: WindowSettings,
    device: torch.device | str = "cpu",
    autocast: bool = True,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: ProgressCallback | None = None,
    stats: dict | None = None,
    stitch_device: torch.device | str | None = None,
    keep: tuple[Sequence[int], Sequence[int]] | None = None,
) -> Iterator[Slab]:
    """Evaluate the windows in MONAI's order and yield the blended output slab by slab.

    Why slabs: MONAI's windows advance slowest along the first axis, so a slab of the volume is
    final as soon as the windows that start at or before its end are in. Only the slabs that the
    current window reaches are kept (one window's depth), never the whole per-class volume;
    the caller turns each finished slab into whatever it keeps (labels, quantised probabilities).
    Per voxel the sums run in MONAI's order with MONAI's Gaussian weights, so the blended values
    equal `monai.inferers.sliding_window_inference` when no window is skipped.
    Voxels that no evaluated window covers (only possible with `skip_empty`) get a confident
    background: logit 0 for every class except +20 for class 0. The network runs on `device`;
    the volume and the stitching live on `stitch_device` (default: the same), so a GPU short of
    memory can leave the stitching to the host. `stats` receives windows_total/evaluated.
    With `keep` = (lower, upper) voxel indices, only that box is blended and yielded (windows
    still run on the whole volume): the accumulators then span the box, not the volume.
    """
    device = torch.device(device)
    stitch = torch.device(stitch_device) if stitch_device is not None else device
    run = plan_run(volume, settings)
    plan, todo, window = run.plan, run.todo, settings.size
    if stats is not None:
        stats.update(run.stats(), model_grid_shape=[int(v) for v in np.shape(volume)])
    run.volume = run.volume.to(stitch)
    weights = compute_importance_map(tuple(window), mode=str(settings.blend), sigma_scale=settings.sigma_scale,
                                     device=stitch, dtype=torch.float32)
    cuts = _segment_bounds(plan, window)
    x_lo = plan.padding[0][0]
    lower, upper = keep if keep is not None else ((0, 0, 0), tuple(int(v) for v in np.shape(volume)))
    # The kept box in padded coordinates.
    (kx0, kx1), (ky0, ky1), (kz0, kz1) = [(int(lo) + pad[0], int(up) + pad[0])
                                          for lo, up, pad in zip(lower, upper, plan.padding)]
    open_segments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    next_to_emit = 0  # index of the first segment not yet yielded

    def segment(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in open_segments:
            length = cuts[i + 1] - cuts[i]
            shape = (length, ky1 - ky0, kz1 - kz0)
            open_segments[i] = (torch.zeros((out_channels, *shape), dtype=accumulate_dtype, device=stitch),
                                torch.zeros(shape, dtype=torch.float32, device=stitch))
        return open_segments[i]

    def finish(i: int) -> Slab | None:
        start, stop = max(cuts[i], kx0), min(cuts[i + 1], kx1)
        if start >= stop:
            return None
        acc, norm = segment(i)
        del open_segments[i]
        covered = norm > 0
        acc /= torch.where(covered, norm, torch.ones_like(norm)).to(accumulate_dtype)
        if not bool(covered.all()):
            background = torch.zeros(out_channels, dtype=accumulate_dtype, device=stitch)
            background[0] = BACKGROUND_LOGIT
            acc.permute(1, 2, 3, 0)[~covered] = background
        part = acc[:, start - cuts[i]:stop - cuts[i]]
        return Slab(start - x_lo, stop - x_lo, part, (ky0 - plan.padding[1][0], kz0 - plan.padding[2][0]))

    def ready(limit: int) -> Iterator[Slab]:
        """Finish and yield the segments that end at or before `limit` (no slab kept after)."""
        nonlocal next_to_emit
        while next_to_emit < len(cuts) - 1 and cuts[next_to_emit + 1] <= limit:
            next_to_emit += 1
            slab = finish(next_to_emit - 1)
            if slab is not None:
                yield slab

    done = 0
    with window_context(device, autocast):
        for batch, outputs in evaluate_windows(run, network, settings, device, progress):
            logits = outputs.to(stitch)
            for s, out in zip(batch, logits):
                yield from ready(s[0].start)  # finish what lies before this window: one window's depth stays open
                y0, y1 = max(s[1].start, ky0), min(s[1].stop, ky1)
                z0, z1 = max(s[2].start, kz0), min(s[2].stop, kz1)
                if y0 >= y1 or z0 >= z1:
                    continue  # the window lies beside the kept box
                wy, wz = slice(y0 - s[1].start, y1 - s[1].start), slice(z0 - s[2].start, z1 - s[2].start)
                ay, az = slice(y0 - ky0, y1 - ky0), slice(z0 - kz0, z1 - kz0)
                weighted = (out[:, :, wy, wz].float() * weights[:, wy, wz]).to(accumulate_dtype)
                x0 = s[0].start
                i = cuts.index(x0)
                while cuts[i] < s[0].stop:
                    if cuts[i + 1] > kx0 and cuts[i] < kx1:
                        acc, norm = segment(i)
                        a, b = cuts[i] - x0, cuts[i + 1] - x0
                        acc[:, :, ay, az] += weighted[:, a:b]
                        norm[:, ay, az] += weights[a:b, wy, wz]
                    i += 1
            done += len(batch)
            # this batch's outputs and blending temporaries must not stay alive (as loop variables)
            # through the next batch's forward: at U96B that is 160 MB on top of its activations
            outputs = logits = out = weighted = None
            # everything before the next window's start is final (windows advance along axis 0)
            yield from ready(todo[done][0].start if done < len(todo) else plan.padded_shape[0])
        yield from ready(plan.padded_shape[0])


def sliding_window_logits(volume: np.ndarray | torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor],
                          out_channels: int, settings: WindowSettings, **options: Any) -> tuple[torch.Tensor, dict]:
    """Blend per-window network outputs into a (C, X, Y, Z) tensor on the CPU.

    The whole blended volume at once (`blend_slabs` is the streaming form and takes the same
    `options`: device, autocast, accumulate_dtype, progress); with `skip_empty=False` and
    float32 it equals `monai.inferers.sliding_window_inference`. Returns the blended output and
    statistics (windows total/evaluated).
    """
    stats: dict = {}
    shape = tuple(int(v) for v in np.shape(volume))
    output = torch.empty((out_channels, *shape), dtype=options.get("accumulate_dtype", torch.float32))
    for slab in blend_slabs(volume, network, out_channels, settings, stats=stats, **options):
        output[:, slab.start:slab.stop] = slab.logits.to("cpu")
        del slab  # let its accumulator go before the next windows run
    return output, stats


def sliding_window_embeddings(
    volume: np.ndarray | torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    settings: WindowSettings,
    device: torch.device | str = "cpu",
    autocast: bool = True,
    progress: ProgressCallback | None = None,
    watch: Callable[[int, int], bool] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Per-window feature vectors (N, D) for the windows that hold anything but air (every
    window when there is nothing but air), from the same loop as the logits.

    `watch(done, total)` is called with 0 before the first window and after each batch, its
    vectors on the host (so the time between calls is the windows' real time): it may raise to
    stop the run, or return True to end it early with the vectors so far (`classify.RunPace`
    times a run by its own first windows; with a watch, the first two go one by one, so that
    stopping there costs two windows whatever the batch size).
    """
    device = torch.device(device)
    run = plan_run(volume, settings, all_when_empty=True)
    vectors: list[torch.Tensor] = []
    if watch is not None and watch(0, len(run.todo)):
        return torch.empty(0), {**run.stats(), "windows_evaluated": 0}
    with window_context(device, autocast):
        for _, outputs in evaluate_windows(run, embed, settings, device, progress, singles=2 if watch else 0):
            vectors.append(outputs.float().cpu())
            if watch is not None and watch(sum(len(v) for v in vectors), len(run.todo)):
                break
    stats = run.stats()
    stats["windows_evaluated"] = sum(len(v) for v in vectors)
    return torch.cat(vectors), stats


def windows_needed(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    return len(plan_windows(shape, window, overlap).slices)


def pad_to_multiple(size: int, multiple: int = 32) -> int:
    return int(math.ceil(size / multiple) * multiple)

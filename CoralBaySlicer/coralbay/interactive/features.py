"""Encoder features of a scan on the bundle's model grid, computed window by window and cached.

What is kept: per model-grid voxel, K principal components of the six encoder maps (strides 1 to
32) upsampled to the window and concatenated. Why a projection: the concatenation has 32F
channels (192 for the demo encoder, 1536 for CoralBayU96B); K=24 float16 values per voxel keep a
whole abdomen's features in tens of MB, and the online head trains on them in well under a second.
Each scale block is scaled to equal total variance before the PCA, so the 16F-channel coarsest map
does not drown the fine ones. The projection is fitted once per encoder on a fixed synthetic scan
(`reference_projection`), so features of different scans share one space. The projection is linear, so projecting each window before blending
equals projecting the blended features: the windows are blended with the Gaussian weights of
segmentation's sliding window (`blend_slabs`) and never held at full width.
Windows are computed lazily (`LazyFeatures`): those an answer needs first, the rest later; a
voxel's value is the blend of every window covering it, summed in integers, so it is the same
whatever the order or timing of the windows (eager, lazy and cached features are bit-identical).
A method gets features through `LazyFeatures.ensure` / `ensure_box` / `region` (every window of
the voxels first) and restricts an answer to a `WorkingRegion` (see `LazyFeatures`).

Cache: one `.npz` per (scan content, encoder weights, preprocessing, recipe), written atomically,
read with `allow_pickle=False`, only ever holding a complete volume; the file holds its own key
and a sha256 of its arrays, and a file
that does not match (corrupt, other weights, other recipe) is recomputed, never trusted. The
reference projection is kept beside them (`projections/`), checked the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from coralbay.interactive.engine import (BACKGROUND_LOGIT, LoadedBundle, WindowSettings, atomic_file,
                                         compute_importance_map, enable_fast_swin, encoder_digest,
                                         generate_phantom, plan_run, plan_windows, prepare, window_context)

log = logging.getLogger("coralbay.interactive")

RECIPE = "pca-multiscale-reference-v3"   # v3: integer (order-free) blending sums
COMPONENTS = 24
PCA_WINDOWS = 4          # windows whose features fit the projection
PCA_SAMPLES = 40_000     # voxels sampled from them


@dataclass
class FeatureVolume:
    """Features and intensities of a scan on its model grid (arrays in (X, Y, Z) order)."""

    features: np.ndarray     # float16 (K, X, Y, Z), unit variance per component
    intensity: np.ndarray    # float32 (X, Y, Z), the network's input in [0, 1]
    grid: sitk.Image         # geometry of the model grid
    key: str
    seconds: float = 0.0     # time it took to compute (0 when read from the cache)
    from_cache: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.intensity.shape)  # type: ignore[return-value]


def scan_digest(image: sitk.Image) -> str:
    """sha256 of a scan's voxels and geometry (what the features depend on in the scan)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    h.update(json.dumps([image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                         image.GetPixelIDTypeAsString()]).encode())
    return h.hexdigest()


def cache_key(scan: str, encoder: str, preprocessing: dict, inference: Mapping[str, Any]) -> str:
    recipe = {"recipe": RECIPE, "components": COMPONENTS, "preprocessing": preprocessing,
              "window": inference["window_size"], "overlap": inference["overlap"]}
    text = json.dumps([scan, encoder, recipe], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _upsampled(maps: list[torch.Tensor], size: tuple[int, int, int]) -> list[torch.Tensor]:
    return [m.float() if tuple(m.shape[2:]) == size
            else F.interpolate(m.float(), size=size, mode="trilinear", align_corners=False) for m in maps]


class Projection:
    """Scale-balanced PCA of the concatenated upsampled encoder maps (fitted on a few windows)."""

    def __init__(self, block_scale: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> None:
        self.block_scale, self.mean, self.basis = block_scale, mean, basis  # (C,), (C,), (C, K)

    @classmethod
    def fit(cls, windows: list[list[torch.Tensor]], components: int, rng: np.random.Generator) -> "Projection":
        samples, blocks = [], None
        for maps in windows:
            size = tuple(maps[0].shape[2:])
            up = torch.cat(_upsampled(maps, size), dim=1)[0].reshape(up_channels(maps), -1)
            pick = torch.as_tensor(rng.choice(up.shape[1], size=min(up.shape[1], PCA_SAMPLES // len(windows)),
                                              replace=False))
            samples.append(up[:, pick])
            blocks = [m.shape[1] for m in maps]
        x = torch.cat(samples, dim=1).T.double()  # (N, C)
        scale = torch.ones(x.shape[1], dtype=torch.float64)
        start = 0
        for width in blocks or []:
            total = float(x[:, start:start + width].var(dim=0).sum())
            scale[start:start + width] = 1.0 / max(total, 1e-12) ** 0.5
            start += width
        x = x * scale
        mean = x.mean(dim=0)
        cov = torch.cov((x - mean).T)
        values, vectors = torch.linalg.eigh(cov)
        k = min(components, x.shape[1])
        order = torch.argsort(values, descending=True)[:k]
        basis = vectors[:, order] / values[order].clamp_min(1e-12).sqrt()  # whitened components
        return cls(scale.float(), (mean / scale).float(), (basis * scale[:, None]).float())

    def __call__(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = tuple(maps[0].shape[2:])
        up = torch.cat(_upsampled(maps, size), dim=1)  # (B, C, X, Y, Z)
        centred = up - self.mean[None, :, None, None, None]
        return torch.einsum("bcxyz,ck->bkxyz", centred, self.basis)


def up_channels(maps: list[torch.Tensor]) -> int:
    return int(sum(m.shape[1] for m in maps))


def _fit_windows(padded: torch.Tensor, plan) -> list[tuple[slice, ...]]:
    """Up to PCA_WINDOWS non-air windows spread over the (padded) volume."""
    busy = [s for s in plan.slices if float(padded[s].max()) > 1e-6] or plan.slices
    picks = sorted(set(np.linspace(0, len(busy) - 1, min(PCA_WINDOWS, len(busy))).round().astype(int)))
    return [busy[i] for i in picks]


def _padded(array: np.ndarray, plan) -> torch.Tensor:
    volume = torch.as_tensor(array)
    if any(a or b for a, b in plan.padding):
        pad = [p for pair in reversed(plan.padding) for p in pair]
        volume = F.pad(volume[None, None], pad)[0, 0]
    return volume


def reference_projection(bundle: LoadedBundle, device: torch.device | str = "cpu",
                         cache_dir: str | os.PathLike | None = None) -> Projection:
    """The encoder's projection, fitted on a fixed synthetic scan (phantom seed 0 at the bundle's spacing).

    Why not the scan itself: the head learns across scans (accepted structures of earlier scans
    are examples for later ones), which needs every scan's features in the same space; a fixed
    reference makes the projection a function of the encoder and preprocessing alone, so the cache
    key stays (scan, encoder, preprocessing). Cost: one small phantom and 4 windows, once per
    process, or none when `cache_dir` holds it: kept there beside the features, so a restarted
    engine starts sooner and projects with the very same matrix (checked like the features).
    """
    manifest = bundle.manifest
    infer = manifest.inference
    window = tuple(int(v) for v in infer["window_size"])
    digest = encoder_digest(bundle.network) + json.dumps([manifest.preprocessing.to_dict(), window], sort_keys=True)
    if digest in _PROJECTIONS:
        return _PROJECTIONS[digest]
    key = hashlib.sha256(json.dumps([digest, RECIPE, COMPONENTS, PCA_WINDOWS, PCA_SAMPLES]).encode()).hexdigest()
    path = Path(cache_dir) / "projections" / f"{key[:32]}.npz" if cache_dir is not None else None
    stored = _read_checked(path, key, ("block_scale", "mean", "basis"), "projection cache") if path else None
    if stored is not None:
        _PROJECTIONS[digest] = Projection(*(torch.from_numpy(stored[n]) for n in ("block_scale", "mean", "basis")))
        return _PROJECTIONS[digest]
    phantom = generate_phantom(0, spacing=float(max(manifest.preprocessing["spacing_mm"])), lesions=False,
                               direction="LPS")
    prepared = prepare(phantom.image, manifest.preprocessing, None, windows=WindowSettings(window, infer["overlap"]))
    plan = plan_windows(prepared.array.shape, window, infer["overlap"])
    padded = _padded(prepared.array, plan)
    encoder = bundle.network.encoder.to(device).eval()
    with torch.inference_mode():
        maps = [[m.cpu() for m in encoder(padded[s][None, None].to(device))]
                for s in _fit_windows(padded, plan)]
    projection = _PROJECTIONS[digest] = Projection.fit(maps, COMPONENTS, np.random.default_rng(0))
    if path is not None:
        _write_checked(path, key, {"block_scale": projection.block_scale.numpy(), "mean": projection.mean.numpy(),
                                   "basis": projection.basis.numpy()})
    return projection


_PROJECTIONS: dict[str, Projection] = {}


FIXED_POINT = 2.0 ** 32    # blending sums are kept as integers of this resolution (see LazyFeatures)


class LazyFeatures:
    """A scan's features computed window by window, in the order the user's work asks for them,
    each voxel's value a fixed function of the scan whatever that order.

    Why lazy: the whole scan's windows took 10-22 s on one core before the first prompt could be
    answered; an answer needs features only around the structure. Why the order must not matter:
    an answer is a function of the scan, the model and the prompts (docs/interactive.md, "Same
    prompts, same mask"), so a voxel's value may not depend on which windows happened to be in when
    a click arrived, nor on the order they were computed in.

    The definition: a voxel's value is the blend of ALL evaluated windows covering it, with
    `blend_slabs`' Gaussian weights (as segmentation blends), and a voxel has a value only once all
    of them are in. The weighted sums are accumulated as 64-bit integers (FIXED_POINT resolution,
    far finer than the float16 kept): integer addition does not depend on order, so eager, lazy in
    any order and cached features are bit-identical. Voxels no evaluated window covers (air) have
    `blend_slabs`' constant background from the start. The bookkeeping is per *cell*: the boxes
    between window borders, whose voxels all lie in the same windows; a cell's accumulators live
    only until its last window is in.

    The API a method uses (everything else is internal):
    - `ensure(voxels)` / `ensure_box(lo, hi)`: compute every window covering those model voxels;
      their features are then final. `region(lo, hi)`: the final features of a box (ensured first).
    - `working_region(voxels)` -> `WorkingRegion`: the voxels an answer may look at, settled by the
      windows covering `voxels`; `grow(voxels)` adds the windows of more voxels. Its mask depends
      only on the voxels asked for, never on what the background computed meanwhile: restrict an
      answer's inputs to it and the answer is the same before, during and after the background work.
    - `step(n)` / `finish()`: the background work; `covered`: voxels with final values (any timing).
    Only the complete volume is written to the cache (atomically); partial work never is.
    """

    def __init__(self, image: sitk.Image | None, bundle: LoadedBundle, key: str, device: torch.device | str = "cpu",
                 cache_dir: str | os.PathLike | None = None, complete: FeatureVolume | None = None) -> None:
        start = time.perf_counter()
        self.bundle, self.device, self.cache_dir = bundle, device, cache_dir
        infer = bundle.manifest.inference
        self.settings = WindowSettings(tuple(int(v) for v in infer["window_size"]), infer["overlap"],
                                       batch_size=1, skip_empty=True)
        if complete is None:
            prepared = prepare(image, bundle.manifest.preprocessing, None, windows=self.settings)
            array, grid = prepared.array, prepared.grid
        else:
            array, grid = complete.intensity, complete.grid
        self.run = plan_run(array, self.settings)
        self.pad = [int(p[0]) for p in self.run.plan.padding]
        shape = self.volume_shape = tuple(int(v) for v in array.shape)
        self._plan_cells()
        self.version = 0                          # windows blended in so far
        self._weights: torch.Tensor | None = None
        self._partial: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if complete is not None:                  # read from the cache: every value is final
            self.volume, self.pending = complete, []
            self.covered = np.ones(shape, bool)
            self.cells_left[:] = 0
            return
        self.pending: list[int] = list(range(len(self.run.todo)))   # indices into run.todo, MONAI order
        features = np.zeros((COMPONENTS, *shape), np.float16)
        self.covered = self._voxels_of(self.cells_left == 0)
        features[0][self.covered] = BACKGROUND_LOGIT   # blend_slabs' background where no window runs
        self.volume = FeatureVolume(features, array, grid, key, time.perf_counter() - start)
        if not self.pending:
            self._finished()

    @classmethod
    def of(cls, volume: FeatureVolume, bundle: LoadedBundle) -> "LazyFeatures":
        """A complete volume (read from the cache) behind the same interface."""
        return cls(None, bundle, volume.key, complete=volume)

    # ---------------------------------------------------------------- cells
    def _plan_cells(self) -> None:
        """Cut each axis at every window border: cells, the windows of each cell and vice versa."""
        regions = [self._crop(s)[0] for s in self.run.todo]
        self.borders = []
        for axis, size in enumerate(self.volume_shape):
            cuts = {0, size} | {r[axis].start for r in regions} | {r[axis].stop for r in regions}
            self.borders.append(np.asarray(sorted(cuts), np.int64))
        # voxel index -> cell index, per axis
        self.cell_of = [np.searchsorted(b, np.arange(size), side="right") - 1
                        for b, size in zip(self.borders, self.volume_shape)]
        self.window_cells: list[tuple[slice, slice, slice]] = []   # per window: its cells (cell-index ranges)
        self.cell_total = np.zeros([len(b) - 1 for b in self.borders], np.int32)
        for region in regions:
            cells = tuple(slice(int(np.searchsorted(b, r.start)), int(np.searchsorted(b, r.stop)))
                          for b, r in zip(self.borders, region))
            self.window_cells.append(cells)
            self.cell_total[cells] += 1
        self.cells_left = self.cell_total.copy()

    def _voxels_of(self, cells: np.ndarray) -> np.ndarray:
        """A per-cell bool array expanded to the voxels."""
        return cells[np.ix_(*self.cell_of)]

    def _cell_box(self, cell: tuple[int, int, int]) -> tuple[slice, ...]:
        return tuple(slice(int(b[c]), int(b[c + 1])) for b, c in zip(self.borders, cell))

    def windows_covering(self, voxels_xyz: np.ndarray) -> set[int]:
        """Every evaluated window containing at least one of the model voxels (N, 3)."""
        voxels = np.asarray(voxels_xyz, np.int64).reshape(-1, 3)
        if not voxels.size:
            return set()
        voxels = np.clip(voxels, 0, np.asarray(self.volume_shape) - 1)
        cells = np.zeros(self.cell_total.shape, bool)
        cells[tuple(self.cell_of[a][voxels[:, a]] for a in range(3))] = True
        return {i for i, w in enumerate(self.window_cells) if cells[w].any()}

    def windows_in_box(self, lower_xyz, upper_xyz) -> set[int]:
        """Every evaluated window meeting the model-grid box [lower, upper)."""
        lo = np.clip(np.asarray(lower_xyz, np.int64), 0, np.asarray(self.volume_shape) - 1)
        hi = np.clip(np.asarray(upper_xyz, np.int64), lo + 1, np.asarray(self.volume_shape))
        out = set()
        for i, s in enumerate(self.run.todo):
            region = self._crop(s)[0]
            if all(r.start < h and l < r.stop for r, l, h in zip(region, lo, hi)):
                out.add(i)
        return out

    def settled(self, windows: set[int]) -> np.ndarray:
        """The voxels whose every window is among `windows` (their value needs nothing else), plus
        the voxels no window covers. A function of `windows` alone, not of what is computed."""
        count = np.zeros(self.cell_total.shape, np.int32)
        for i in windows:
            count[self.window_cells[i]] += 1
        return self._voxels_of(count == self.cell_total)

    # ---------------------------------------------------------------- the API of a method
    @property
    def complete(self) -> bool:
        return not self.pending

    @property
    def fraction(self) -> float:
        total = len(self.run.todo)
        return 1.0 if not total else 1.0 - len(self.pending) / total

    def ensure(self, voxels_xyz: np.ndarray, progress: Callable[[float, str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> int:
        """Compute every window covering the model voxels (N, 3); how many were computed."""
        return self._compute_set(self.windows_covering(voxels_xyz), progress, cancelled)

    def ensure_box(self, lower_xyz, upper_xyz, progress: Callable[[float, str], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> int:
        """Compute every window meeting the model-grid box [lower, upper); how many were computed."""
        return self._compute_set(self.windows_in_box(lower_xyz, upper_xyz), progress, cancelled)

    def region(self, lower_xyz, upper_xyz, progress: Callable[[float, str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        """The final features (K, x, y, z) of the model-grid box [lower, upper) (its windows first)."""
        self.ensure_box(lower_xyz, upper_xyz, progress, cancelled)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lower_xyz, upper_xyz))
        return self.volume.features[(slice(None), *box)]

    def working_region(self, voxels_xyz: np.ndarray | None,
                       progress: Callable[[float, str], None] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> "WorkingRegion":
        """The region settled by the windows covering `voxels_xyz` (None: the whole scan), computed."""
        region = WorkingRegion(self, progress, cancelled)
        if voxels_xyz is None:
            region.grow_to_all()
        else:
            region.grow(voxels_xyz)
        return region

    def step(self, count: int = 1, progress: Callable[[float, str], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> bool:
        """Compute the next `count` pending windows; True while some remain."""
        self._compute(self.pending[:count], progress, cancelled)
        return bool(self.pending)

    def finish(self, progress: Callable[[float, str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
        self._compute(list(self.pending), progress, cancelled)
        return self.volume

    # ---------------------------------------------------------------- computing windows
    def _crop(self, s: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """A padded window's part inside the volume: (volume slices, window-local slices)."""
        out, local = [], []
        for axis, sl in enumerate(s):
            lo, hi = sl.start - self.pad[axis], sl.stop - self.pad[axis]
            a, b = max(lo, 0), min(hi, self.volume_shape[axis])
            out.append(slice(a, b))
            local.append(slice(a - lo, b - lo))
        return tuple(out), tuple(local)

    def _compute_set(self, windows: set[int], progress, cancelled) -> int:
        todo = [i for i in self.pending if i in windows]
        self._compute(todo, progress, cancelled)
        return len(todo)

    def _compute(self, windows: list[int], progress, cancelled) -> None:
        if not windows:
            return
        start = time.perf_counter()
        enable_fast_swin(self.bundle.network)
        projection = reference_projection(self.bundle, self.device, self.cache_dir)
        encoder = self.bundle.network.encoder.to(self.device).eval()
        if self._weights is None:
            self._weights = compute_importance_map(self.settings.size, mode=str(self.settings.blend),
                                                   sigma_scale=self.settings.sigma_scale, device="cpu",
                                                   dtype=torch.float32).double()
        total = len(self.run.todo)
        with window_context(torch.device(self.device), False):
            for i in windows:
                if cancelled is not None and cancelled():
                    raise InterruptedError("cancelled")
                s = self.run.todo[i]
                x = self.run.volume[s][None, None].to(self.device)
                out = projection([m.float() for m in encoder(x)])[0].cpu().double()
                self._blend(i, out)
                self.pending.remove(i)
                self.version += 1
                if progress:
                    done = total - len(self.pending)
                    progress(done / max(1, total), f"window {done}/{total}")
        self.volume.seconds += time.perf_counter() - start
        if not self.pending:
            self._finished()

    def _blend(self, window: int, out: torch.Tensor) -> None:
        """Add one window's weighted output (K, window) to its cells; a cell whose last window this
        was gets its final values. Integer sums: the result does not depend on the order."""
        region, local = self._crop(self.run.todo[window])
        origin = [r.start - l.start for r, l in zip(region, local)]   # volume index of window-local 0
        cells = self.window_cells[window]
        for cell in np.ndindex(*[c.stop - c.start for c in cells]):
            cell = tuple(int(c.start + k) for c, k in zip(cells, cell))
            box = self._cell_box(cell)
            inside = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, origin))
            weights = self._weights[inside]
            if cell not in self._partial:
                size = tuple(b.stop - b.start for b in box)
                self._partial[cell] = (torch.zeros((COMPONENTS, *size), dtype=torch.int64),
                                       torch.zeros(size, dtype=torch.int64))
            acc, norm = self._partial[cell]
            acc += torch.round(out[(slice(None), *inside)] * weights * FIXED_POINT).to(torch.int64)
            norm += torch.round(weights * FIXED_POINT).to(torch.int64)
            self.cells_left[cell] -= 1
            if self.cells_left[cell] == 0:
                del self._partial[cell]
                value = acc.double() / norm.double()
                self.volume.features[(slice(None), *box)] = value.float().numpy().astype(np.float16)
                self.covered[box] = True

    def _finished(self) -> None:
        """All windows in: write the cache (only now, atomically)."""
        self._partial = {}
        if self.cache_dir is not None:
            write_cache(self.cache_dir, self.volume)


class WorkingRegion:
    """The model voxels an answer may use: those settled by the windows of the voxels it asked for.

    Why: an answer restricted to this mask reads only final feature values that the prompts (and
    the answer's own growth) chose, so it is the same whether the other windows were computed
    before, during or never. `windows` only grows; `mask` is `LazyFeatures.settled(windows)`.
    """

    def __init__(self, features: LazyFeatures, progress: Callable[[float, str], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> None:
        self.features, self.progress, self.cancelled = features, progress, cancelled
        self.windows: set[int] = set()
        self.mask = features.settled(self.windows)
        self.everything = False

    @property
    def key(self) -> tuple[int, ...]:
        """Identifies the mask (for caches of what is computed over it)."""
        return tuple(sorted(self.windows))

    def grow(self, voxels_xyz: np.ndarray) -> bool:
        """Add the windows covering `voxels_xyz` (computing them); False when nothing was added."""
        new = self.features.windows_covering(voxels_xyz) - self.windows
        if not new:
            return False
        self._add(new)
        return True

    def grow_to_all(self) -> None:
        self._add(set(range(len(self.features.run.todo))) - self.windows)

    def _add(self, windows: set[int]) -> None:
        self.features._compute_set(windows, self.progress, self.cancelled)
        self.windows |= windows
        self.mask = self.features.settled(self.windows)
        self.everything = bool(self.mask.all())


def compute_features(image: sitk.Image, bundle: LoadedBundle, key: str, device: torch.device | str = "cpu",
                     progress: Callable[[float, str], None] | None = None,
                     cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
    """Preprocess like segmentation, then blend the projected encoder maps window by window (all of them)."""
    return LazyFeatures(image, bundle, key, device).finish(progress, cancelled)


# --------------------------------------------------------------------------------------------
# The disk cache
# --------------------------------------------------------------------------------------------

def _grid_record(grid: sitk.Image) -> np.ndarray:
    return np.asarray([*grid.GetSize(), *grid.GetSpacing(), *grid.GetOrigin(), *grid.GetDirection()], np.float64)


def _grid_from_record(record: np.ndarray) -> sitk.Image:
    size = [int(v) for v in record[:3]]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in record[3:6]])
    grid.SetOrigin([float(v) for v in record[6:9]])
    grid.SetDirection([float(v) for v in record[9:18]])
    return grid


def _content_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_path(folder: str | os.PathLike, key: str) -> Path:
    return Path(folder) / f"features-{key[:32]}.npz"


def _write_checked(target: Path, key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Arrays with their key and a sha256 of their content, written atomically (a crash leaves the
    old file or none, never half of one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = _content_digest(*arrays.values())
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays, key=np.frombuffer(key.encode(), np.uint8),
                     digest=np.frombuffer(digest.encode(), np.uint8))
    return target


def _read_checked(path: Path, key: str, names: tuple[str, ...], what: str) -> dict[str, np.ndarray] | None:
    """The arrays `names` of a `_write_checked` file, or None when absent, unreadable, of another
    key or not matching its digest (logged: the caller recomputes, never trusts it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = bytes(data["key"]).decode()
            stored_digest = bytes(data["digest"]).decode()
            arrays = {name: data[name] for name in names}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError, io.UnsupportedOperation) as exc:
        log.warning(f"The {what} {path.name} is unreadable ({type(exc).__name__}); recomputing it.")
        return None
    if stored_key != key:
        log.warning(f"The {what} {path.name} was made from other inputs or weights; recomputing it.")
        return None
    if _content_digest(*arrays.values()) != stored_digest:
        log.warning(f"The {what} {path.name} is corrupt; recomputing it.")
        return None
    return arrays


def write_cache(folder: str | os.PathLike, volume: FeatureVolume) -> Path:
    """Write the features atomically (a crash leaves the old file or none, never half of one)."""
    return _write_checked(cache_path(folder, volume.key), volume.key,
                          {"features": volume.features, "intensity": volume.intensity,
                           "grid": _grid_record(volume.grid)})


def read_cache(folder: str | os.PathLike, key: str) -> FeatureVolume | None:
    """The cached features for `key`, or None when absent, unreadable, corrupt or from other inputs."""
    path = cache_path(folder, key)
    arrays = _read_checked(path, key, ("features", "intensity", "grid"), "feature cache")
    if arrays is None:
        return None
    features, intensity, grid = arrays["features"], arrays["intensity"], arrays["grid"]
    if features.ndim != 4 or features.shape[1:] != intensity.shape or grid.shape != (18,):
        log.warning(f"The feature cache {path.name} is corrupt; recomputing it.")
        return None
    return FeatureVolume(features, intensity, _grid_from_record(grid), key, 0.0, True)


def feature_key(image: sitk.Image, bundle: LoadedBundle) -> str:
    manifest = bundle.manifest
    return cache_key(scan_digest(image), encoder_digest(bundle.network), manifest.preprocessing.to_dict(),
                     manifest.inference)


def open_features(image: sitk.Image, bundle: LoadedBundle, cache_dir: str | os.PathLike | None,
                  device: torch.device | str = "cpu") -> LazyFeatures:
    """The scan's features: complete from the cache when it holds a valid entry, else nothing computed yet
    (windows come on demand; the cache is written when the last one is in)."""
    key = feature_key(image, bundle)
    if cache_dir is not None:
        cached = read_cache(cache_dir, key)
        if cached is not None:
            return LazyFeatures.of(cached, bundle)
    return LazyFeatures(image, bundle, key, device, cache_dir)


def scan_features(image: sitk.Image, bundle: LoadedBundle, cache_dir: str | os.PathLike | None,
                  device: torch.device | str = "cpu", progress: Callable[[float, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
    """The scan's complete features: from the cache when it holds a valid entry, else computed (and cached)."""
    return open_features(image, bundle, cache_dir, device).finish(progress, cancelled)

"""Encoder features of a scan on the bundle's model grid, computed window by window and cached.

What is kept: per model-grid voxel, K principal components of the six encoder maps (strides 1 to
32) upsampled to the window and concatenated. Why a projection: the concatenation has 32F
channels (192 for the demo encoder, 1536 for CoralBayU96B); K=24 float16 values per voxel keep a
whole abdomen's features in tens of MB, and the online head trains on them in well under a second.
Each scale block is scaled to equal total variance before the PCA, so the 16F-channel coarsest map
does not drown the fine ones. The projection is fitted once per encoder on a fixed synthetic scan
(`reference_projection`), so features of different scans share one space. The projection is linear, so projecting each window before blending
equals projecting the blended features: the windows are blended with the sliding-window code of
segmentation (`blend_slabs`' Gaussian weights and summation) and never held at full width.
Windows are computed lazily (`LazyFeatures`): those an answer needs first, the rest later.

Cache: one `.npz` per (scan content, encoder weights, preprocessing, recipe), written atomically,
read with `allow_pickle=False`, only ever holding a complete volume; the file holds its own key
and a sha256 of its arrays, and a file
that does not match (corrupt, other weights, other recipe) is recomputed, never trusted.
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

RECIPE = "pca-multiscale-reference-v2"
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


def reference_projection(bundle: LoadedBundle, device: torch.device | str = "cpu") -> Projection:
    """The encoder's projection, fitted on a fixed synthetic scan (phantom seed 0 at the bundle's spacing).

    Why not the scan itself: the head learns across scans (accepted structures of earlier scans
    are examples for later ones), which needs every scan's features in the same space; a fixed
    reference makes the projection a function of the encoder and preprocessing alone, so the cache
    key stays (scan, encoder, preprocessing). Cost: one small phantom and 4 windows per process.
    """
    manifest = bundle.manifest
    infer = manifest.inference
    window = tuple(int(v) for v in infer["window_size"])
    digest = encoder_digest(bundle.network) + json.dumps([manifest.preprocessing.to_dict(), window], sort_keys=True)
    if digest in _PROJECTIONS:
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
    _PROJECTIONS[digest] = Projection.fit(maps, COMPONENTS, np.random.default_rng(0))
    return _PROJECTIONS[digest]


_PROJECTIONS: dict[str, Projection] = {}


class LazyFeatures:
    """A scan's features computed window by window, in the order the user's work asks for them.

    Why: the whole scan's windows took 10-22 s on one core before the first prompt could be
    answered; the head needs features only around the structure. `ensure` computes the windows
    that contain given model voxels (nearest first), `step` computes the next pending ones (between
    requests). Each window is blended into float32 accumulators exactly as `blend_slabs` does,
    so when every window is in, in MONAI's order, the volume equals the eager one bit for bit; in
    another order it equals it up to float32 summation order (<= 1 float16 step, tested).
    `covered` marks the voxels with features: at least one of their windows is in, or no
    evaluated window covers them (air only: the constant background of `blend_slabs`).
    Only the complete volume is written to the cache (atomically); partial work never is.
    """

    def __init__(self, image: sitk.Image, bundle: LoadedBundle, key: str, device: torch.device | str = "cpu",
                 cache_dir: str | os.PathLike | None = None) -> None:
        start = time.perf_counter()
        self.bundle, self.device, self.cache_dir = bundle, device, cache_dir
        infer = bundle.manifest.inference
        self.settings = WindowSettings(tuple(int(v) for v in infer["window_size"]), infer["overlap"],
                                       batch_size=1, skip_empty=True)
        prepared = prepare(image, bundle.manifest.preprocessing, None, windows=self.settings)
        self.run = plan_run(prepared.array, self.settings)
        self.pad = [int(p[0]) for p in self.run.plan.padding]
        self.pending: list[int] = list(range(len(self.run.todo)))   # indices into run.todo, MONAI order
        k = COMPONENTS
        shape = self.volume_shape = tuple(int(v) for v in prepared.array.shape)
        self.acc = torch.zeros((k, *shape), dtype=torch.float32)
        self.norm = torch.zeros(shape, dtype=torch.float32)
        reach = np.zeros(shape, bool)
        for s in self.run.todo:
            reach[self._crop(s)[0]] = True
        self.covered = ~reach
        features = np.zeros((k, *shape), np.float16)
        features[0][self.covered] = BACKGROUND_LOGIT   # blend_slabs' background where no window runs
        self.volume = FeatureVolume(features, prepared.array, prepared.grid, key, time.perf_counter() - start)
        self.version = 0                          # windows blended in so far
        self._weights: torch.Tensor | None = None
        if not self.pending:
            self._finished()

    @classmethod
    def of(cls, volume: FeatureVolume) -> "LazyFeatures":
        """A complete volume (read from the cache) behind the same interface."""
        self = cls.__new__(cls)
        self.volume, self.pending, self.version, self.cache_dir = volume, [], 0, None
        self.covered = np.ones(volume.shape, bool)
        return self

    @property
    def complete(self) -> bool:
        return not self.pending

    @property
    def fraction(self) -> float:
        total = len(self.run.todo) if hasattr(self, "run") else 0
        return 1.0 if not total else 1.0 - len(self.pending) / total

    def _crop(self, s: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """A padded window's part inside the volume: (volume slices, window-local slices)."""
        out, local = [], []
        for axis, sl in enumerate(s):
            lo, hi = sl.start - self.pad[axis], sl.stop - self.pad[axis]
            a, b = max(lo, 0), min(hi, self.volume_shape[axis])
            out.append(slice(a, b))
            local.append(slice(a - lo, b - lo))
        return tuple(out), tuple(local)

    def windows_at(self, voxels_xyz: np.ndarray) -> list[int]:
        """Pending windows that give features to the voxels (N, 3) without them: per voxel, the window
        containing it whose centre is nearest to it (one window, not all that contain it: with
        overlap 0.5 a voxel lies in up to 8-27). Nearest to the voxels' mean first."""
        voxels = np.asarray(voxels_xyz, np.int64).reshape(-1, 3)
        if not self.pending or voxels.size == 0:
            return []
        voxels = voxels[~self.covered[tuple(voxels.T)]]
        if not len(voxels):
            return []
        regions = [self._crop(s)[0] for s in self.run.todo]
        lo = np.asarray([[r.start for r in region] for region in regions])          # (W, 3)
        hi = np.asarray([[r.stop for r in region] for region in regions])
        inside = np.all((voxels[:, None] >= lo[None]) & (voxels[:, None] < hi[None]), axis=2)   # (N, W)
        centre = (lo + hi) / 2.0
        distance = np.linalg.norm(voxels[:, None] - centre[None], axis=2)
        best = np.where(inside, distance, np.inf).argmin(axis=1)
        chosen = [int(i) for i in np.unique(best) if int(i) in self.pending]
        mean = voxels.mean(0)
        return sorted(chosen, key=lambda i: float(np.linalg.norm(centre[i] - mean)))

    def ensure(self, voxels_xyz: np.ndarray, progress: Callable[[float, str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> int:
        """Give the voxels without features their windows (`windows_at`); how many were computed."""
        todo = self.windows_at(voxels_xyz)
        self._compute(todo, progress, cancelled)
        return len(todo)

    def step(self, count: int = 1, progress: Callable[[float, str], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> bool:
        """Compute the next `count` pending windows; True while some remain."""
        self._compute(self.pending[:count], progress, cancelled)
        return bool(self.pending)

    def finish(self, progress: Callable[[float, str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
        self._compute(list(self.pending), progress, cancelled)
        return self.volume

    def _compute(self, windows: list[int], progress, cancelled) -> None:
        if not windows:
            return
        start = time.perf_counter()
        enable_fast_swin(self.bundle.network)
        projection = reference_projection(self.bundle, self.device)
        encoder = self.bundle.network.encoder.to(self.device).eval()
        if self._weights is None:
            self._weights = compute_importance_map(self.settings.size, mode=str(self.settings.blend),
                                                   sigma_scale=self.settings.sigma_scale, device="cpu",
                                                   dtype=torch.float32)
        total = len(self.run.todo)
        with window_context(torch.device(self.device), False):
            for i in windows:
                if cancelled is not None and cancelled():
                    raise InterruptedError("cancelled")
                s = self.run.todo[i]
                x = self.run.volume[s][None, None].to(self.device)
                out = projection([m.float() for m in encoder(x)])[0].cpu()
                region, local = self._crop(s)
                weights = self._weights[local]
                self.acc[(slice(None), *region)] += out[(slice(None), *local)].float() * weights
                self.norm[region] += weights
                norm = self.norm[region]
                value = self.acc[(slice(None), *region)] / torch.where(norm > 0, norm, torch.ones_like(norm))
                self.volume.features[(slice(None), *region)] = value.numpy().astype(np.float16)
                self.covered[region] = True
                self.pending.remove(i)
                self.version += 1
                if progress:
                    done = total - len(self.pending)
                    progress(done / max(1, total), f"window {done}/{total}")
        self.volume.seconds += time.perf_counter() - start
        if not self.pending:
            self._finished()

    def _finished(self) -> None:
        """All windows in: drop the accumulators, write the cache (only now, atomically)."""
        self.acc = self.norm = None  # type: ignore[assignment]
        if self.cache_dir is not None:
            write_cache(self.cache_dir, self.volume)


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


def _content_digest(features: np.ndarray, intensity: np.ndarray, grid: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (features, intensity, grid):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_path(folder: str | os.PathLike, key: str) -> Path:
    return Path(folder) / f"features-{key[:32]}.npz"


def write_cache(folder: str | os.PathLike, volume: FeatureVolume) -> Path:
    """Write the features atomically (a crash leaves the old file or none, never half of one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = cache_path(folder, volume.key)
    grid = _grid_record(volume.grid)
    digest = _content_digest(volume.features, volume.intensity, grid)
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, features=volume.features, intensity=volume.intensity, grid=grid,
                     key=np.frombuffer(volume.key.encode(), np.uint8),
                     digest=np.frombuffer(digest.encode(), np.uint8))
    return target


def read_cache(folder: str | os.PathLike, key: str) -> FeatureVolume | None:
    """The cached features for `key`, or None when absent, unreadable, corrupt or from other inputs."""
    path = cache_path(folder, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = bytes(data["key"]).decode()
            stored_digest = bytes(data["digest"]).decode()
            features, intensity, grid = data["features"], data["intensity"], data["grid"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError, io.UnsupportedOperation) as exc:
        log.warning(f"The feature cache {path.name} is unreadable ({type(exc).__name__}); recomputing it.")
        return None
    if stored_key != key:
        log.warning(f"The feature cache {path.name} was made from other inputs or weights; recomputing it.")
        return None
    if (features.ndim != 4 or features.shape[1:] != intensity.shape or grid.shape != (18,)
            or _content_digest(features, intensity, grid) != stored_digest):
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
            return LazyFeatures.of(cached)
    return LazyFeatures(image, bundle, key, device, cache_dir)


def scan_features(image: sitk.Image, bundle: LoadedBundle, cache_dir: str | os.PathLike | None,
                  device: torch.device | str = "cpu", progress: Callable[[float, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
    """The scan's complete features: from the cache when it holds a valid entry, else computed (and cached)."""
    return open_features(image, bundle, cache_dir, device).finish(progress, cancelled)

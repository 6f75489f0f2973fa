"""Encoder features of a scan on the bundle's model grid, computed window by window and cached.

What is kept: per model-grid voxel, K principal components of the six encoder maps (strides 1 to
32) upsampled to the window and concatenated. Why a projection: the concatenation has 32F
channels (192 for the demo encoder, 1536 for CoralBayU96B); K=24 float16 values per voxel keep a
whole abdomen's features in tens of MB, and the online head trains on them in well under a second.
Each scale block is scaled to equal total variance before the PCA, so the 16F-channel coarsest map
does not drown the fine ones. The projection is fitted once per encoder on a fixed synthetic scan
(`reference_projection`), so features of different scans share one space. The projection is linear, so projecting each window before blending
equals projecting the blended features: the windows are blended with the sliding-window code of
segmentation (`blend_slabs`, Gaussian weights) and never held at full width.

Cache: one `.npz` per (scan content, encoder weights, preprocessing, recipe), written atomically,
read with `allow_pickle=False`; the file holds its own key and a sha256 of its arrays, and a file
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

from coralbay.interactive.engine import (LoadedBundle, atomic_file, blend_slabs, enable_fast_swin, encoder_digest,
                                         generate_phantom, plan_windows, prepare, WindowSettings)

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


def compute_features(image: sitk.Image, bundle: LoadedBundle, key: str, device: torch.device | str = "cpu",
                     progress: Callable[[float, str], None] | None = None,
                     cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
    """Preprocess like segmentation, then blend the projected encoder maps window by window."""
    start = time.perf_counter()
    manifest = bundle.manifest
    infer = manifest.inference
    window = tuple(int(v) for v in infer["window_size"])
    enable_fast_swin(bundle.network)
    projection = reference_projection(bundle, device)
    settings = WindowSettings(window, infer["overlap"], batch_size=1, skip_empty=True)
    prepared = prepare(image, manifest.preprocessing, None, windows=settings)
    volume = torch.as_tensor(prepared.array)
    encoder = bundle.network.encoder.to(device).eval()

    def embed(x: torch.Tensor) -> torch.Tensor:
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        return projection([m.float() for m in encoder(x)])

    k = projection.basis.shape[1]
    features = np.empty((k, *volume.shape), dtype=np.float16)
    for slab in blend_slabs(prepared.array, embed, k, settings, device=device, autocast=False,
                            progress=progress):
        features[:, slab.start:slab.stop] = slab.logits.cpu().numpy().astype(np.float16)
    seconds = time.perf_counter() - start
    return FeatureVolume(features, prepared.array, prepared.grid, key, seconds)


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


def scan_features(image: sitk.Image, bundle: LoadedBundle, cache_dir: str | os.PathLike | None,
                  device: torch.device | str = "cpu", progress: Callable[[float, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
    """The scan's features: from the cache when it holds a valid entry, else computed (and cached)."""
    manifest = bundle.manifest
    key = cache_key(scan_digest(image), encoder_digest(bundle.network), manifest.preprocessing.to_dict(),
                    manifest.inference)
    if cache_dir is not None:
        cached = read_cache(cache_dir, key)
        if cached is not None:
            return cached
    volume = compute_features(image, bundle, key, device, progress, cancelled)
    if cache_dir is not None:
        write_cache(cache_dir, volume)
    return volume

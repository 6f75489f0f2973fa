"""What a benchmark runs on: the input volume (a file, a resampled copy, or a phantom) and the bundle.

Both paths read the same file from disk in their own process, so each pays its own loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.errors import UsageError


def resampled_copy(source: str | os.PathLike, spacing_mm: float, folder: Path) -> Path:
    """The input resampled to isotropic `spacing_mm` over the same extent (anti-aliased linear)."""
    from coralbay.grid.resample import resample_to_grid
    from coralbay.inference.preprocess import AIR_HU
    from coralbay.io.volumes import read_volume

    image = read_volume(source)
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    grid = sitk.Image([max(1, int(round(e / spacing_mm))) for e in extent], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(image.GetDirection())
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    grid.SetOrigin([float(v) for v in corner + direction @ np.full(3, spacing_mm / 2)])
    resampled = sitk.Cast(sitk.Round(resample_to_grid(image, grid, AIR_HU)), sitk.sitkInt16)
    path = folder / f"input_{spacing_mm:g}mm.nrrd"
    sitk.WriteImage(resampled, str(path), False)
    return path


def synthetic_volume(size: int, spacing_mm: float, folder: Path, seed: int = 0) -> Path:
    """A size^3 abdominal CT phantom (air around the body, as in a real scan) stored LPS."""
    from coralbay.phantom import generate_phantom

    phantom = generate_phantom(seed, spacing=spacing_mm, shape=(size, size, size), direction="LPS")
    path = folder / f"phantom_{size}_{spacing_mm:g}mm.nrrd"
    sitk.WriteImage(phantom.image, str(path), False)
    return path


def random_bundle(folder: Path, classes: int, *, template: str | None, feature_size: int,
                  window: Sequence[int], spacing_mm: Sequence[float],
                  project_dims: Sequence[int] | None = None) -> Path:
    """A random-weight segmentation bundle with `classes` structures.

    With a `template` bundle, its architecture and preprocessing are kept and only the head's
    class count (and all weights) change: "the same model, a bigger head".
    """
    from coralbay.bundle.factory import create_random_bundle, manifest_fields
    from coralbay.io.labels import LabelTable

    labels = LabelTable.generic(range(1, classes + 1))
    if template:
        from coralbay.bundle.manifest import read_manifest
        from coralbay.bundle.catalog import resolve_model

        base = read_manifest(resolve_model(template))
        arch = base.data["architecture"]
        fields = manifest_fields(
            f"{base.name}-random-{classes}", "segmentation", feature_size=int(arch["feature_size"]),
            labels=labels, spacing_mm=base.preprocessing["spacing_mm"],
            window_hu=base.preprocessing["intensity_window_hu"],
            window_size=base.inference["window_size"], overlap=base.inference["overlap"],
            project_dims=arch.get("project_dims"), window_batch_size=base.inference["window_batch_size"])
        fields["preprocessing"] = dict(base.data["preprocessing"])
    else:
        if any(w % 32 for w in window):
            raise UsageError("--window must be a multiple of 32 (the encoder's total stride).")
        fields = manifest_fields(f"random-f{feature_size}-{classes}", "segmentation",
                                 feature_size=feature_size, labels=labels, spacing_mm=spacing_mm,
                                 window_size=window, project_dims=list(project_dims) if project_dims else None)
    return create_random_bundle(folder / "random-bundle", fields, seed=0)

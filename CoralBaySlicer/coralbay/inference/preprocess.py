"""Preprocessing per bundle: body crop (and ROI), one resampling onto the model grid, HU window
to [0, 1]. The geometry (boxes, model grid, resampling) lives in `coralbay.grid`; this module
decides what the network sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.bundle.manifest import PreprocessingSettings
from coralbay.errors import InputError
from coralbay.grid.boxes import IndexBox, covering_box, crop, foreground_box, intersect, lps_box_to_index_box
from coralbay.grid.model_grid import model_grid, to_xyz
from coralbay.grid.resample import replicate_edges, resample_to_grid
from coralbay.grid.windows import WindowSettings


AIR_HU = -1024.0


@dataclass
class Prepared:
    """A volume ready for the network, with the grid it lives on."""

    array: np.ndarray          # float32 (X, Y, Z), intensities scaled to [0, 1]
    grid: sitk.Image           # 1-voxel-type image carrying the model grid's geometry
    input_box: IndexBox        # the part of the input grid the model grid covers (crop/ROI)


def window_intensities(array: np.ndarray, window_hu: Sequence[float]) -> np.ndarray:
    """Clip to the HU window and scale it to [0, 1] (in place on a float32 array)."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    np.clip(array, lo, hi, out=array)
    array -= lo
    array *= 1.0 / (hi - lo)
    return array


def prepare(image: sitk.Image, preprocessing: PreprocessingSettings | Mapping[str, Any],
            roi_lps: Sequence[float] | None = None, windows: WindowSettings | None = None) -> Prepared:
    """Crop to the body (and ROI), resample onto the model grid, window the intensities.

    `preprocessing` is a bundle's section (typed, or its JSON dict). With `windows`, the crop is grown to whole sliding windows of the
    uncropped grid (see `window_span`), so cropping changes which windows are evaluated but not
    the result for any voxel in the body.
    """
    settings = PreprocessingSettings.parse(preprocessing)
    box = IndexBox((0, 0, 0), tuple(image.GetSize()))  # type: ignore[arg-type]
    if settings.crop_foreground:
        box = foreground_box(image, settings.foreground_threshold_hu, settings.foreground_margin_mm)
    if roi_lps is not None:
        roi_box = lps_box_to_index_box(image, roi_lps[:3], roi_lps[3:])
        if roi_box.is_empty():
            raise InputError("The ROI lies outside the volume.")
        box = intersect(box, roi_box)
        if box.is_empty():
            box = roi_box  # an ROI entirely in air: honour the user's region anyway
    grid = model_grid(image, box, settings.spacing_mm, (windows.size, windows.overlap) if windows else None)
    covering = covering_box(image, grid, context=2)
    part = replicate_edges(crop(image, covering), covering, image, grid)
    resampled = resample_to_grid(part, grid, AIR_HU, settings.antialias)
    array = np.ascontiguousarray(to_xyz(sitk.GetArrayFromImage(resampled)))
    window_intensities(array, settings.intensity_window_hu)
    return Prepared(array, grid, box)

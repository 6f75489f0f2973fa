"""A scan's two grids and the maps between them: the input grid (z, y, x: prompts, answers, the
graph cut) and the model grid (X, Y, Z: features, the head's logits, uncertainty). One home for the
index arithmetic the session needs, set up once per scan."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from coralbay.interactive import prompts as P
from coralbay.interactive.engine import to_xyz

MASK_LOGIT = 4.0       # the model-grid logits shown for an answer: +- this, blurred (uncertainty at its border)


class ScanGrids:
    """The input grid (`image`) and the model grid (`grid`, array shape `shape`, X Y Z)."""

    def __init__(self, image: sitk.Image, grid: sitk.Image, shape: tuple[int, int, int]) -> None:
        self.image, self.grid, self.shape = image, grid, tuple(shape)
        # index -> physical -> model index, one matrix each way (affine grids)
        self._input_to_model = _index_map(image, grid)
        self._model_to_input = _model_samples(image, grid)

    def input_voxel(self, lps) -> tuple[int, int, int]:
        """The input voxel (z, y, x) of a point (LPS mm) inside the volume (else a UsageError)."""
        x, y, z = P.inside_index(self.image, lps)
        return (z, y, x)

    def model_voxels(self, input_zyx: np.ndarray) -> np.ndarray:
        """Model-grid voxels (X, Y, Z) nearest to input voxels (z, y, x)."""
        xyz1 = np.c_[np.asarray(input_zyx)[:, ::-1], np.ones(len(input_zyx))]
        idx = np.round(xyz1 @ self._input_to_model.T).astype(int)
        return np.clip(idx, 0, np.asarray(self.shape) - 1)

    def model_mask(self, mask_zyx: np.ndarray) -> np.ndarray:
        """An input-grid mask on the model grid (a model voxel is in when most of it is)."""
        return model_mask_on(mask_zyx, self.image, self.grid)

    def mask_logits(self, mask: np.ndarray) -> np.ndarray:
        """The answer on the model grid as logits (+-MASK_LOGIT, sampled at the model voxels'
        centres, blurred by one model voxel): the uncertainty and next click follow its border."""
        index, inside = self._model_to_input
        sampled = np.zeros(inside.shape, bool)
        sampled[inside] = mask.ravel()[index[inside]]
        logits = np.where(sampled, MASK_LOGIT, -MASK_LOGIT).astype(np.float32).reshape(self.shape)
        return ndimage.gaussian_filter(logits, 1.0)


def _model_samples(image: sitk.Image, grid: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """For each model voxel (X, Y, Z order, flattened): the flat input index (z, y, x) nearest its
    centre, and whether that lies inside the input volume. (The map is affine, so each input
    coordinate is a broadcast sum over the three model axes: no table of every voxel's index.)"""
    size = grid.GetSize()
    to_input = np.linalg.inv(np.vstack([_index_map(image, grid), [0, 0, 0, 1]]))[:3]
    axes = [np.arange(n, dtype=np.float64).reshape([-1 if a == i else 1 for a in range(3)]) for i, n in enumerate(size)]
    shape = np.asarray(image.GetSize())
    inside = np.ones(tuple(size), bool)
    flat = np.zeros(tuple(size), np.int64)
    for c in (2, 1, 0):             # flat = (z * ny + y) * nx + x on the input grid
        index = np.rint(axes[0] * to_input[c, 0] + axes[1] * to_input[c, 1] + axes[2] * to_input[c, 2]
                        + to_input[c, 3]).astype(np.int64)
        inside &= (index >= 0) & (index < shape[c])
        flat = flat * shape[c] + np.clip(index, 0, shape[c] - 1)
    return flat.ravel(), inside.ravel()


def _index_map(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """3x4 matrix taking an input voxel index (x, y, z, 1) to a model-grid continuous index."""
    def affine(img: sitk.Image) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
        m[:3, 3] = img.GetOrigin()
        return m
    return (np.linalg.inv(affine(grid)) @ affine(image))[:3]


def model_mask_on(mask_zyx: np.ndarray, image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """An input-grid mask on the model grid (a model voxel is in when most of it is)."""
    src = sitk.GetImageFromArray(mask_zyx.astype(np.float32))
    src.CopyInformation(image)
    out = sitk.Resample(src, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return to_xyz(sitk.GetArrayFromImage(out)) > 0.5

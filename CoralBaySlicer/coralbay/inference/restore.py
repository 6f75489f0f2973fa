"""Class probabilities on the model grid, kept compactly, and labels back on the input grid.

Why class probabilities, not labels, are resampled back to the input grid: the model grid is
coarser than most CT grids (1.5 mm vs 0.7 mm in-plane). Nearest-neighbour resampling of an argmax
label map would copy each coarse voxel into a staircase block and shift boundaries by up to half
a coarse voxel; linear interpolation of each class's probability followed by the argmax on the
input grid puts each boundary where the probabilities cross, smoothly and at sub-voxel
precision.

Why quantised probabilities: softmax outputs lie in [0, 1] and the argmax of interpolated
values needs them only to about 1e-5 (16 bits; 8 bits, a few thousandths, suffice for a
confident trained model), so 16 or 8 bits per class and voxel replace 32-bit floats: a
14-class model on a 300^3 grid keeps 0.76 or 0.38 GB instead of 1.5 GB. The input grid is visited in chunks of slices; for each chunk only the
model-grid box it needs is resampled, class by class, into a running maximum, so no per-class
volume on the input grid exists either, and only the cropped part of the input grid is touched
(voxels outside the body crop are background).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.grid.boxes import IndexBox, covering_box, input_subgrid
from coralbay.io.labels import LabelTable
from coralbay.vocabulary import RestoreMethod

LEVELS = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
CHUNK_VOXELS = 4_000_000  # input-grid voxels restored at once (a few tens of MB of buffers)
PIECE_VALUES = 4_000_000  # values softmaxed and quantised at once (16 MB of float32)


class ProbabilityStore:
    """Per-class probabilities on the model grid, quantised to `dtype` (uint8 or uint16).

    Stored as (C, Z, Y, X), SimpleITK's array order, so one class's box is one cheap copy.
    With `region` = (lower, upper) model-grid indices, only that box is kept: the windows cover
    more than the body (whole windows of the uncropped grid), the restore needs only the body.
    """

    def __init__(self, channels: int, shape_xyz: tuple[int, int, int], grid: sitk.Image,
                 dtype: np.dtype | type = np.uint8,
                 region: tuple[Sequence[int], Sequence[int]] | None = None) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in LEVELS:
            raise ValueError(f"probability store dtype must be uint8 or uint16, not {self.dtype}")
        self.levels = LEVELS[self.dtype]
        lower, upper = region if region is not None else ((0, 0, 0), shape_xyz)
        self.lower = tuple(int(v) for v in lower)
        self.upper = tuple(int(v) for v in upper)
        self.grid = input_subgrid(grid, IndexBox(self.lower, self.upper))
        self.shape_xyz = tuple(u - l for l, u in zip(self.lower, self.upper))
        self.data = np.zeros((channels, *self.shape_xyz[::-1]), dtype=self.dtype)

    @property
    def channels(self) -> int:
        return self.data.shape[0]

    def put_logits(self, start: int, stop: int, logits: torch.Tensor, offset_yz: tuple[int, int] = (0, 0)) -> None:
        """Softmax a (C, stop-start, Y, Z) slab of logits of the model grid (its Y and Z starting
        at `offset_yz`) and keep the part in the region, quantised (piece by piece)."""
        (x0, y0, z0), (x1, y1, z1) = self.lower, self.upper
        first, last = max(start, x0), min(stop, x1)
        if first >= last:
            return
        (oy, oz) = offset_yz
        logits = logits[:, first - start:last - start, y0 - oy:y1 - oy, z0 - oz:z1 - oz]
        start, stop = first - x0, last - x0
        for a, b in self._pieces(logits.shape, start, stop):
            piece = torch.softmax(logits[:, a - start:b - start].float(), dim=0)
            self.put_probabilities(a, b, piece)

    def put_probabilities(self, start: int, stop: int, probs: torch.Tensor) -> None:
        """Keep a (C, stop-start, Y, Z) slab of probabilities quantised (region coordinates)."""
        torch_dtype = torch.uint8 if self.dtype == np.uint8 else torch.int32
        for a, b in self._pieces(probs.shape, start, stop):
            part = probs[:, a - start:b - start].float().clamp(0.0, 1.0).mul_(self.levels).round_()
            quantised = part.to(torch_dtype).to("cpu").numpy().astype(self.dtype, copy=False)
            self.data[:, :, :, a:b] = quantised.transpose(0, 3, 2, 1)

    @staticmethod
    def _pieces(shape, start: int, stop: int, budget: int = PIECE_VALUES):
        """Sub-slabs of about `budget` values: the float temporaries stay small whatever the slab."""
        per_plane = max(1, int(np.prod(shape)) // max(1, shape[1]))
        step = max(1, budget // per_plane)
        for a in range(start, stop, step):
            yield a, min(stop, a + step)

    def class_image(self, channel: int, lower: Sequence[int], upper: Sequence[int]) -> sitk.Image:
        """Channel `channel` over the model-grid box [lower, upper) (x, y, z) as an image."""
        (x0, y0, z0), (x1, y1, z1) = lower, upper
        return self._box_image(self.data[channel, z0:z1, y0:y1, x0:x1], lower)

    def argmax_image(self, lower: Sequence[int], upper: Sequence[int]) -> sitk.Image:
        """The most probable channel over the model-grid box [lower, upper) (x, y, z) as an image
        (the first one on ties, as torch.argmax)."""
        (x0, y0, z0), (x1, y1, z1) = lower, upper
        best = np.argmax(self.data[:, z0:z1, y0:y1, x0:x1], axis=0)
        return self._box_image(best.astype(np.uint8 if self.channels < 256 else np.uint16), lower)

    def _box_image(self, array_zyx: np.ndarray, lower: Sequence[int]) -> sitk.Image:
        """`array_zyx` (a box of the store starting at `lower`) as an image on the model grid, with
        one more plane on every side repeating the edge one.

        Why the repeated planes: an input voxel centre may lie up to half a model voxel beyond the
        last model voxel centre, and exactly half-way ITK counts it as outside the image (its
        buffer ends half-open at size - 1/2) and would give it the default value. Repeating the
        edge there is MONAI's border padding, the same convention as `grid.resample.replicate_edges`;
        inside the box the extra planes are never read (boxes carry one voxel of context).
        """
        image = sitk.GetImageFromArray(np.pad(array_zyx, 1, mode="edge"))
        image.SetSpacing(self.grid.GetSpacing())
        image.SetDirection(self.grid.GetDirection())
        image.SetOrigin(self.grid.TransformContinuousIndexToPhysicalPoint([float(v) - 1.0 for v in lower]))
        return image


def region_for(grid: sitk.Image, image: sitk.Image, box: IndexBox) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The model-grid voxels that linear interpolation at the centres of `box` of `image` reads."""
    region = covering_box(grid, input_subgrid(image, box), context=1)
    return region.lower, region.upper


RESTORE_METHODS = RestoreMethod.values()


def restore_labels(store: ProbabilityStore, image: sitk.Image, box: IndexBox, table: LabelTable,
                     keep: LabelTable, want_probabilities: bool, chunk_voxels: int = CHUNK_VOXELS,
                     method: RestoreMethod = RestoreMethod.LINEAR) -> tuple[sitk.Image, dict[str, sitk.Image] | None]:
    """Labels on the input grid (see module docstring): with `method` "linear", the argmax of
    linearly resampled class probabilities; with "nearest", the model grid's argmax labels copied
    to each input voxel from the nearest model voxel (what MONAI's `Invertd` of an argmax does;
    for comparing with that path). Probability maps are resampled linearly either way.

    Channel c of `store` is background for c = 0, else `table`'s c-th label. Input voxels up to
    half a model voxel beyond the model grid take its edge values (`ProbabilityStore.class_image`);
    farther out (never, for a grid made by `grid.model_grid.model_grid`), background has probability 1.
    """
    if method not in RESTORE_METHODS:
        raise ValueError(f"unknown restore method {method!r}")
    target = input_subgrid(image, box)
    ni, nj, nk = target.GetSize()
    values = [0] + [lab.value for lab in table]
    kept = {lab.value for lab in keep}
    best_class = np.zeros((nk, nj, ni), dtype=np.uint8 if len(values) < 256 else np.uint16)
    maps = {c: np.zeros((nk, nj, ni), dtype=np.float32) for c, v in enumerate(values)
            if want_probabilities and c and v in kept}
    step = max(1, chunk_voxels // max(1, ni * nj))
    for k0 in range(0, nk, step):
        k1 = min(nk, k0 + step)
        chunk = input_subgrid(target, IndexBox((0, 0, k0), (ni, nj, k1)))
        model_box = covering_box(store.grid, chunk, context=1)
        lower, upper = model_box.lower, model_box.upper
        if method == "nearest":
            moved = sitk.Resample(store.argmax_image(lower, upper), chunk, sitk.Transform(),
                                  sitk.sitkNearestNeighbor, 0)
            best_class[k0:k1] = sitk.GetArrayViewFromImage(moved)
            if not maps:
                continue
        best_value = None
        for channel in range(store.channels):
            moved = sitk.Resample(store.class_image(channel, lower, upper), chunk, sitk.Transform(),
                                  sitk.sitkLinear, float(store.levels if channel == 0 else 0),
                                  sitk.sitkFloat32)
            prob = sitk.GetArrayViewFromImage(moved)
            if method == "linear":
                if best_value is None:
                    best_value = np.array(prob, copy=True)
                else:
                    better = prob > best_value
                    best_value[better] = prob[better]
                    best_class[k0:k1][better] = channel
            if channel in maps:
                maps[channel][k0:k1] = prob * (1.0 / store.levels)
    lookup = np.array([v if (v in kept) else 0 for v in values], dtype=np.uint16)
    dtype = np.uint8 if max(values) < 256 else np.uint16
    sub = sitk.GetImageFromArray(lookup[best_class].astype(dtype, copy=False))
    sub.CopyInformation(target)
    pixel = sitk.sitkUInt8 if dtype == np.uint8 else sitk.sitkUInt16
    labels = paste(sub, image, box, 0, pixel)
    if not want_probabilities:
        return labels, None
    probabilities = {}
    for channel, array in maps.items():
        prob_image = sitk.GetImageFromArray(array)
        prob_image.CopyInformation(target)
        probabilities[table.by_value(values[channel]).name] = paste(prob_image, image, box, 0.0,
                                                                    sitk.sitkFloat32)
    return labels, probabilities


def paste(sub: sitk.Image, image: sitk.Image, box: IndexBox, fill: float, pixel: int) -> sitk.Image:
    """Place a sub-grid image into a full image on `image`'s grid, `fill` elsewhere."""
    full = sitk.Image(image.GetSize(), pixel)
    full.CopyInformation(image)
    if fill:
        full += fill
    return sitk.Paste(full, sitk.Cast(sub, pixel), sub.GetSize(), [0, 0, 0], [int(v) for v in box.lower])

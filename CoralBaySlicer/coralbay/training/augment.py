"""Random training crops and augmentations (the recipe eva uses for its radiology benchmarks).

Crops are balanced by label: with probability `foreground_prob` a crop is centred on a random
voxel of a randomly chosen structure present in the case (each structure equally likely, so
small ones such as the aorta are seen as often as the liver), otherwise anywhere. Then random
flips, 90-degree rotations in the axial plane and a small intensity scale and shift.

Why left/right labels are swapped on a left-right flip: the model grid is always RAS, so a
mirrored kidney_left lies where a kidney_right lies in every real scan; keeping its label would
teach the network that either side may be either kidney.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from coralbay.io.labels import LabelTable
from coralbay.training.data import Case


@dataclass(frozen=True)
class AugmentSettings:
    window: tuple[int, int, int]
    foreground_prob: float = 0.9
    flip_prob: float = 0.1       # per axis
    rotate_prob: float = 0.1     # a 90, 180 or 270 degree turn in the axial (x, y) plane
    scale_prob: float = 0.1
    scale: float = 0.1           # intensities times 1 + U(-scale, scale)
    shift_prob: float = 0.5
    shift: float = 0.1           # intensities plus U(-shift, shift) (the [0, 1] HU window scale)


def mirror_lookup(table: LabelTable) -> np.ndarray | None:
    """Class index -> class index of the mirrored structure (left <-> right by name), or None."""
    lut = np.arange(len(table) + 1, dtype=np.uint8)
    swapped = False
    swap = {"left": "right", "right": "left"}
    for index, lab in enumerate(table, start=1):
        other_name = re.sub(r"(?i)(?<![a-z])(left|right)(?![a-z])",
                            lambda m: _same_case(m.group(0), swap[m.group(0).lower()]), lab.name)
        other = table.by_name(other_name) if other_name != lab.name else None
        if other is not None:
            lut[index] = [lab.value for lab in table].index(other.value) + 1
            swapped = True
    return lut if swapped else None


def _same_case(original: str, replacement: str) -> str:
    return replacement.capitalize() if original[:1].isupper() else replacement


class CropSampler:
    """Random window-sized crops of one case (padded with air when the case is smaller)."""

    def __init__(self, case: Case, window: Sequence[int]) -> None:
        self.name = case.name
        self.window = tuple(int(w) for w in window)
        pad = [((max(w - s, 0)) // 2, max(w - s, 0) - max(w - s, 0) // 2) for s, w in zip(case.image.shape, self.window)]
        self.image = np.pad(case.image, pad) if any(a or b for a, b in pad) else case.image
        self.target = np.pad(case.target, pad) if any(a or b for a, b in pad) else case.target
        flat = self.target.reshape(-1)
        self.voxels = {int(c): np.flatnonzero(flat == c) for c in np.unique(flat) if c}

    def sample(self, rng: np.random.Generator, foreground_prob: float,
               structure: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A crop centred on a random voxel of `structure` (a class index present in the case), else
        with probability `foreground_prob` on one of a random structure, else anywhere."""
        shape = np.asarray(self.image.shape)
        if structure is None and self.voxels and rng.random() < foreground_prob:
            classes = sorted(self.voxels)
            structure = classes[int(rng.integers(len(classes)))]
        if structure is not None:
            voxels = self.voxels[structure]
            centre = np.asarray(np.unravel_index(int(voxels[int(rng.integers(len(voxels)))]), self.image.shape))
        else:
            centre = np.asarray([int(rng.integers(n)) for n in shape])
        window = np.asarray(self.window)
        start = np.clip(centre - window // 2, 0, shape - window)
        box = tuple(slice(int(a), int(a + w)) for a, w in zip(start, window))
        return self.image[box], self.target[box]


def augment(image: np.ndarray, target: np.ndarray, settings: AugmentSettings, rng: np.random.Generator,
            mirror: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Flips, axial 90-degree rotations and intensity changes of one crop (arrays are copied)."""
    for axis in range(3):
        if rng.random() < settings.flip_prob:
            image, target = np.flip(image, axis), np.flip(target, axis)
            if axis == 0 and mirror is not None:
                target = mirror[target]
    if settings.window[0] == settings.window[1] and rng.random() < settings.rotate_prob:
        k = int(rng.integers(1, 4))
        image, target = np.rot90(image, k, axes=(0, 1)), np.rot90(target, k, axes=(0, 1))
    image = np.array(image, dtype=np.float32)
    if rng.random() < settings.scale_prob:
        image *= np.float32(1.0 + rng.uniform(-settings.scale, settings.scale))
    if rng.random() < settings.shift_prob:
        image += np.float32(rng.uniform(-settings.shift, settings.shift))
    return image, np.array(target, dtype=np.int64)


def pool_crop_structure(sampler: CropSampler, k: int) -> int | None:
    """The structure the k-th pool crop of a case is centred on: each structure of the case in
    turn, then one crop anywhere (None), so that every structure, however small, gets the same
    number of crops and the background far from all of them is seen too. (The pool starts case i
    at turn i, so a few crops per case still cover every structure over the cases.)"""
    classes = sorted(sampler.voxels)
    turn = k % (len(classes) + 1)
    return classes[turn] if turn < len(classes) else None


def sample_batch(samplers: Sequence[CropSampler], settings: AugmentSettings, rng: np.random.Generator,
                 batch_size: int, mirror: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, X, Y, Z) float inputs and (B, 1, X, Y, Z) int64 class targets."""
    images, targets = [], []
    for _ in range(batch_size):
        sampler = samplers[int(rng.integers(len(samplers)))]
        image, target = augment(*sampler.sample(rng, settings.foreground_prob), settings, rng, mirror)
        images.append(image)
        targets.append(target)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(targets))[:, None]

"""The generated CT phantom that the module offers as Slicer sample data.

Why generated: the project ships no patient data; the engine's `coralbay phantom` makes a CT-like
volume with known structures (and their true label map) from a seed, so a new user can try the
module in one click and the in-Slicer self-test can check Dice against the truth. It is generated
once into Slicer's cache folder and loaded from there afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PHANTOM_SEED = 7
PHANTOM_SPACING_MM = 1.5   # isotropic, about 200 x 170 x 130 voxels: quick to segment on a CPU
PHANTOM_DIRECTION = "LPS"  # an ordinary axial CT, as a first-time user expects
SAMPLE_CATEGORY = "CoralBay"
SAMPLE_NAME = "CoralBayPhantom"
CT_NODE_NAME = "CoralBayPhantom"
TRUTH_NODE_NAME = "CoralBayPhantom truth"


def phantom_folder(cache_dir: Union[str, os.PathLike], seed: int = PHANTOM_SEED) -> Path:
    return Path(cache_dir) / "CoralBay" / f"phantom-seed-{int(seed)}-{PHANTOM_SPACING_MM:g}mm-{PHANTOM_DIRECTION}"


def phantom_files(cache_dir: Union[str, os.PathLike], seed: int = PHANTOM_SEED) -> tuple[Path, Path]:
    """Where the phantom CT and its true label map live in the cache."""
    folder = phantom_folder(cache_dir, seed)
    return folder / "ct.nrrd", folder / "labels.nrrd"


def phantom_cached(cache_dir: Union[str, os.PathLike], seed: int = PHANTOM_SEED) -> bool:
    return all(p.is_file() and p.stat().st_size > 0 for p in phantom_files(cache_dir, seed))

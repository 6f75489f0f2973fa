"""The masks of the accepted examples (layout: `coralbay.io.examples`), read and written.

Why apart from the layout: these need numpy and SimpleITK; the layout is read by the Slicer module
before those are installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.io.examples import AcceptedStructure, mask_path, record_accepted
from coralbay.io.volumes import write_image


def write_accepted(examples_dir: str | os.PathLike, scan_id: str, scan_path: str, name: str, value: int,
                   mask_zyx: np.ndarray, reference: sitk.Image, model_name: str = "",
                   encoder_sha256: str = "") -> Path:
    """Keep one accepted structure: its mask beside the scan's record (both written atomically)."""
    path = mask_path(examples_dir, scan_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = sitk.GetImageFromArray(np.asarray(mask_zyx, np.uint8))
    mask.CopyInformation(reference)
    write_image(mask, path)
    return record_accepted(examples_dir, scan_id, scan_path, name, value, model_name, encoder_sha256)


def read_mask(structure: AcceptedStructure) -> np.ndarray:
    """An accepted structure's mask as a bool array (z, y, x)."""
    from coralbay.io.volumes import read_image_any  # verified like every other read (a cut file is refused)

    return sitk.GetArrayFromImage(read_image_any(structure.mask)) > 0

"""Checks of a DICOM series' slice geometry before it is stacked into a volume.

Why: ITK stacks slices assuming even spacing and a common orientation; an irregular series would
silently become a distorted volume. We read only the geometry tags (pydicom, no pixel data) and
refuse what cannot be stacked correctly, saying what is wrong.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from coralbay.errors import InputError

SPACING_TOLERANCE = 0.01  # relative deviation of a slice step from the median step


def check_series_geometry(files: Sequence[str]) -> None:
    """Raise InputError when the slices of a series are not a regular stack."""
    if len(files) < 2:
        raise InputError("The DICOM series has a single slice; a 3D volume is needed.")
    import pydicom

    positions, orientations = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True,
                                 specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
            positions.append([float(v) for v in ds.ImagePositionPatient])
            orientations.append([float(v) for v in ds.ImageOrientationPatient])
        except Exception:  # noqa: BLE001 - any missing/garbled tag means the same to the user
            raise InputError(f"The DICOM file {f} lacks a valid position or orientation tag.") from None
    orient = np.asarray(orientations)
    if np.abs(orient - orient[0]).max() > 1e-3:
        raise InputError("The DICOM slices have different orientations; they do not form one volume.")
    row, col = orient[0, :3], orient[0, 3:]
    normal = np.cross(row, col)
    pos = np.asarray(positions)
    along = pos @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    if np.any(steps < 1e-3):
        raise InputError("The DICOM series has two slices at the same position (duplicate or mixed series).")
    in_plane = pos[order] - np.outer(along[order], normal)
    if np.abs(in_plane - in_plane[0]).max() > 0.01 * float(np.median(steps)) + 1e-3:
        raise InputError("The DICOM slices are not stacked perpendicular to their planes (tilted "
                         "or sheared series); it cannot be read as a regular volume.")
    median = float(np.median(steps))
    if np.abs(steps - median).max() > SPACING_TOLERANCE * median:
        raise InputError(f"The DICOM slice spacing is uneven ({steps.min():.3g} to {steps.max():.3g} mm; "
                         "missing slices?); it cannot be read as a regular volume.")

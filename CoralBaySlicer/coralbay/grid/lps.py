"""The one matrix from voxel indices to physical LPS millimetres.

Every writer that needs it (.seg.nrrd's space directions, mesh vertices) reads it here, so
spacing, direction and origin are combined in one place and in one order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk


def index_to_lps(image: sitk.Image, offset: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) of `image` (or of a crop of it starting at `offset`)
    to LPS millimetres: direction x spacing, then origin."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    linear = direction @ np.diag(image.GetSpacing())
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(image.GetOrigin()) + linear @ np.asarray(offset, dtype=float)
    return matrix

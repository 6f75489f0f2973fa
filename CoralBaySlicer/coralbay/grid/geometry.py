"""The geometry of a voxel grid without its voxels: what travels in place of an input image when
only its grid matters (labels are restored onto the input's grid on a worker that never read it).
"""

from __future__ import annotations

from dataclasses import dataclass

import SimpleITK as sitk


@dataclass(frozen=True)
class GridGeometry:
    """Size, spacing (mm), origin (LPS mm) and direction of an image's grid; small and picklable."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "GridGeometry":
        return cls(tuple(int(v) for v in image.GetSize()), tuple(image.GetSpacing()),  # type: ignore[arg-type]
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))  # type: ignore[arg-type]

    def blank_image(self) -> sitk.Image:
        """An all-zero UInt8 image on this grid (1 byte per voxel): a carrier of the geometry for
        code that takes an image but reads only its grid."""
        image = sitk.Image(list(self.size), sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

"""Read any label input the engine accepts: a label-map file (with its `<name>.labels.json`
sidecar), a Slicer `.seg.nrrd`, or a DICOM SEG file, as one UInt16 label map plus its table.

Why one reader: `compare` and `export` must accept the same inputs with the same checks, and
every caller then sees the names, colours and terminology wherever the input carries them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.errors import InputError
from coralbay.io.labels import LabelTable, find_label_table
from coralbay.io.volumes import check_volume, read_label_map

# More distinct values than any anatomical label map has: the file is most likely an image.
MAX_DISTINCT_LABELS = 1000


@dataclass
class LabelInput:
    path: Path
    image: sitk.Image  # UInt16 label map
    table: LabelTable | None  # names/colours/terminology when the input carries them
    kind: str  # "label map", "Slicer segmentation" or "DICOM SEG"
    voxel_counts: dict[int, int] = field(default_factory=dict)  # label value -> voxels (0 excluded)
    warnings: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[int]:
        return sorted(self.voxel_counts)


def count_labels(image: sitk.Image) -> dict[int, int]:
    """Voxels per non-zero label value."""
    counts = np.bincount(sitk.GetArrayViewFromImage(image).ravel())
    return {int(v): int(n) for v, n in enumerate(counts) if v and n}


def read_labels(path: str | os.PathLike, dicom_series: str | os.PathLike | None = None) -> LabelInput:
    """Read a label map, `.seg.nrrd` or DICOM SEG (using `dicom_series` for a SEG's geometry)."""
    from coralbay.io.dicom_seg import is_dicom_file

    p = Path(path)
    if not p.exists():
        raise InputError(f"The label input {p} does not exist.")
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a label-map file (NIfTI, NRRD, MHA), a .seg.nrrd or a "
                         "DICOM SEG file.")
    warnings: list[str] = []
    if p.name.lower().endswith(".seg.nrrd"):
        from coralbay.io.seg_nrrd import read_seg_nrrd

        image, table, warnings = read_seg_nrrd(p)
        image, kind = check_volume(image, f"The segmentation {p}"), "Slicer segmentation"
    elif is_dicom_file(p):
        from coralbay.io.dicom_seg import read_dicom_seg

        image, table, warnings = read_dicom_seg(p, dicom_series)
        image, kind = check_volume(image, f"The DICOM SEG {p}"), "DICOM SEG"
    else:
        image, table, kind = read_label_map(p), find_label_table(p), "label map"
    image = sitk.Cast(image, sitk.sitkUInt16)
    counts = count_labels(image)
    if len(counts) > MAX_DISTINCT_LABELS:
        raise InputError(f"{p} has {len(counts)} distinct values; that looks like an image, not a label map.")
    return LabelInput(p, image, table, kind, counts, warnings)

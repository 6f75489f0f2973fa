"""Label maps on disk, the one home for reading and writing them.

Reading: any label input the engine accepts (a label-map file with its `<name>.labels.json`
sidecar, a Slicer `.seg.nrrd`, or a DICOM SEG file) as one UInt16 label map plus its table.
Writing: a label map together with its sidecar table (both or neither), and probability maps.

Why one module: `segment`, `compare`, `export` and training must accept and write the same
files with the same checks, and every caller then sees the names, colours and terminology
wherever the input carries them. The label table itself (`coralbay.io.labels`) stays apart
because it is standard-library only: the bundle manifest and the Slicer module read it
before SimpleITK or PyTorch are there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import atomic_dir, atomic_file
from coralbay.errors import InputError
from coralbay.io.dicom_seg import is_dicom_file, read_dicom_seg
from coralbay.io.labels import LabelTable, find_label_table, label_table_path_for
from coralbay.io.seg_nrrd import read_seg_nrrd
from coralbay.io.volumes import check_output_path, check_volume, read_volume, write_image_verified

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


def read_label_map(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D label map and return it as UInt16; refuse non-integer or negative labels."""
    image = read_volume(path)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(f"The label map {path} has non-integer values; labels must be integers.")
    if array.size and array.min() < 0:
        raise InputError(f"The label map {path} has negative values; labels must be 0 or positive.")
    if array.size and array.max() > 65535:
        raise InputError(f"The label map {path} has label values above 65535.")
    return sitk.Cast(image, sitk.sitkUInt16)


def read_labels(path: str | os.PathLike, dicom_series: str | os.PathLike | None = None,
                series: str | None = None) -> LabelInput:
    """Read a label map, `.seg.nrrd` or DICOM SEG (using `dicom_series` for a SEG's geometry: a
    series folder, or a study folder with `series` choosing the series)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"The label input {p} does not exist.")
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a label-map file (NIfTI, NRRD, MHA), a .seg.nrrd or a "
                         "DICOM SEG file.")
    warnings: list[str] = []
    if p.name.lower().endswith(".seg.nrrd"):
        image, table, warnings = read_seg_nrrd(p)
        image, kind = check_volume(image, f"The segmentation {p}"), "Slicer segmentation"
    elif is_dicom_file(p):
        image, table, warnings = read_dicom_seg(p, dicom_series, series)
        image, kind = check_volume(image, f"The DICOM SEG {p}"), "DICOM SEG"
    else:
        image, table, kind = read_label_map(p), find_label_table(p), "label map"
    image = sitk.Cast(image, sitk.sitkUInt16)
    counts = count_labels(image)
    if len(counts) > MAX_DISTINCT_LABELS:
        raise InputError(f"{p} has {len(counts)} distinct values; that looks like an image, not a label map.")
    return LabelInput(p, image, table, kind, counts, warnings)


def write_label_map(labels: sitk.Image, table: LabelTable, path: str | os.PathLike) -> Path:
    """Write a label map and its `<name>.labels.json` table, both or neither.

    Both are written completely under temporary names first; only then is the table renamed into
    place, and the map last, so a failure while writing leaves the previous pair untouched.
    """
    path = check_output_path(path)
    with atomic_file(path) as map_tmp, atomic_file(label_table_path_for(path)) as table_tmp:
        table_tmp.write_text(json.dumps(table.to_dict(), indent=2) + "\n", encoding="utf-8")
        write_image_verified(labels, map_tmp, True, target=path)
    return path


def write_probability_maps(maps: dict[str, sitk.Image], folder: str | os.PathLike) -> Path:
    """One float32 `<structure>.nii.gz` per structure, the folder replaced as a whole."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for name, image in maps.items():
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            write_image_verified(image, tmp / f"{safe}.nii.gz", True, target=folder / f"{safe}.nii.gz")
    return folder

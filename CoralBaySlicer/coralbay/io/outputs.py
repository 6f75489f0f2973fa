"""Writing the engine's results: label maps with their label-table sidecar, probability maps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import SimpleITK as sitk

from coralbay.atomic import atomic_dir, atomic_file
from coralbay.io.labels import LabelTable, label_table_path_for
from coralbay.io.volumes import check_output_path, write_image_verified


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

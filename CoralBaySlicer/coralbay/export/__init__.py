"""`export_labels`: a label map (with its label table) to the formats other tools read.

nifti     `<name>.nii.gz` or `.nii`, plus the `<name>.labels.json` sidecar (names, colours, codes)
nrrd      `<name>.nrrd`, plus the sidecar
seg.nrrd  a Slicer segmentation: segment names, colours and terminology (slicerio)
dicom-seg a DICOM SEG (`.dcm`) referencing the source series given as `dicom_series` (highdicom)
stl, obj  a folder with one closed surface mesh per structure, in LPS millimetres (VTK)
Every output is written under a temporary name and renamed when complete. This module imports
only the standard library at load time, so the command line can list FORMATS quickly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from coralbay.atomic import atomic_dir, check_folder_output_name
from coralbay.errors import InputError, UsageError
from coralbay.io.labels import Label, LabelTable, distinct_color, load_label_table
from coralbay.vocabulary import ExportFormat

FORMATS = ExportFormat.values()
SUFFIXES = {ExportFormat.NIFTI: (".nii.gz", ".nii"), ExportFormat.NRRD: (".nrrd",),
            ExportFormat.SEG_NRRD: (".seg.nrrd",), ExportFormat.DICOM_SEG: (".dcm",)}


def _check_output(fmt: str, output: Path) -> None:
    name = output.name.lower()
    if fmt in SUFFIXES:
        suffixes = SUFFIXES[fmt]
        if not name.endswith(suffixes) or (fmt == ExportFormat.NRRD and name.endswith(".seg.nrrd")):
            raise UsageError(f"The {fmt} output {output} must end in {' or '.join(suffixes)}.")
        if output.is_dir():
            raise UsageError(f"The output {output} is a folder; give a file name.")
    elif output.exists() and not output.is_dir():
        raise UsageError(f"The {fmt} output {output} must be a folder (one mesh file per structure).")
    elif not output.is_dir() and output.suffix:
        check_folder_output_name(output, f"an {fmt} export (one mesh file per structure)")
    elif output.is_dir() and any(output.iterdir()) and not any(output.glob(f"*.{fmt}")):
        raise UsageError(f"The folder {output} exists and holds other files; give a new folder for the meshes.")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"The output folder {parent} does not exist.")


def complete_table(table: LabelTable | None, values: list[int], warn: Callable[[str], None]) -> LabelTable:
    """The table restricted to `values`, with generic entries for values it does not name."""
    known = [table.by_value(v) for v in values] if table else [None] * len(values)
    missing = [v for v, lab in zip(values, known) if lab is None]
    if table and missing:
        warn(f"The label table does not name label(s) {', '.join(map(str, missing))}; they are exported "
             "as \"label N\".")
    return LabelTable([lab or Label(v, f"label {v}", distinct_color(v - 1)) for v, lab in zip(values, known)])


def export_labels(labels_path: str | os.PathLike, fmt: str, output: str | os.PathLike,
                  dicom_series: str | os.PathLike | None = None,
                  label_table: LabelTable | str | os.PathLike | None = None,
                  warn: Callable[[str], None] | None = None, algorithm_type: str = "AUTOMATIC",
                  series: str | None = None) -> Path:
    """Export a label input (label map, `.seg.nrrd` or DICOM SEG) to `fmt`; returns the output path.

    `dicom_series` may be a study folder; `series` (SeriesNumber or UID) then chooses the series.
    `label_table` (a LabelTable or a table file) overrides the input's own names and colours.
    """
    from coralbay.io.label_maps import read_labels

    warn = warn or (lambda message: None)
    if fmt not in FORMATS:
        raise UsageError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    fmt = ExportFormat(fmt)
    out = Path(output)
    _check_output(fmt, out)
    if fmt == ExportFormat.DICOM_SEG and dicom_series is None:
        raise UsageError("A DICOM SEG export needs the source series it refers to: give --dicom-series DIR.")
    if dicom_series is not None and not Path(dicom_series).is_dir():
        raise InputError(f"The DICOM series folder {dicom_series} does not exist.")
    source = read_labels(labels_path, dicom_series, series)  # the series also places a DICOM SEG input
    for message in source.warnings:
        warn(message)
    if not source.values:
        raise InputError(f"The label map {labels_path} has no labelled voxels; there is nothing to export.")
    if isinstance(label_table, (str, os.PathLike)):
        label_table = load_label_table(label_table)
    if label_table is None and source.table is None:
        warn(f"The label map {labels_path} comes without a label table (its <name>.labels.json sidecar): "
             "its structures are exported as \"label N\" without anatomy codes; give --labels TABLE to name them.")
    table = complete_table(label_table or source.table, source.values, warn)
    image = source.image

    if fmt in (ExportFormat.NIFTI, ExportFormat.NRRD):
        from coralbay.io.label_maps import write_label_map

        write_label_map(image, table, out)
    elif fmt == ExportFormat.SEG_NRRD:
        from coralbay.io.seg_nrrd import write_seg_nrrd

        write_seg_nrrd(image, table, out)
    elif fmt == ExportFormat.DICOM_SEG:
        from coralbay.io.dicom_seg import write_dicom_seg

        _, messages = write_dicom_seg(image, table, dicom_series, out, algorithm_type=algorithm_type,
                                      series=series)
        for message in messages:
            warn(message)
    else:
        from coralbay.export.meshes import write_structure_meshes

        with atomic_dir(out) as tmp_dir:
            write_structure_meshes(image, table, tmp_dir, str(fmt))
    return out

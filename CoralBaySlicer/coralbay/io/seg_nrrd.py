"""Slicer segmentation files (`.seg.nrrd`) <-> label maps with their label table (slicerio).

Writing keeps the label values (one layer, each segment's LabelValue = its label value), names,
colours and the DICOM terminology (Slicer's TerminologyEntry tag), so Slicer shows the segments
exactly as the engine named them. Reading accepts several layers (overlapping segments): the
segment listed later wins a shared voxel, with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import atomic_file
from coralbay.errors import InputError
from coralbay.grid.lps import index_to_lps
from coralbay.io.labels import Label, LabelTable, Terminology, distinct_color


def write_seg_nrrd(image: sitk.Image, table: LabelTable, output: str | os.PathLike) -> Path:
    """Write the labels present in `image` as segments of a Slicer `.seg.nrrd` file."""
    import slicerio

    out = Path(output)
    labels = sitk.GetArrayFromImage(image)  # (k, j, i)
    present = [int(v) for v in np.unique(labels) if v]
    boxes = {}
    from scipy import ndimage

    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is not None:
            boxes[index + 1] = box
    segments = []
    for value in present:
        label = table.by_value(value) or Label(value, f"label {value}", distinct_color(value - 1))
        k, j, i = boxes[value]
        segment = {"id": f"Segment_{value}", "name": label.name,
                   "color": [round(c / 255.0, 6) for c in label.color], "labelValue": value, "layer": 0,
                   "extent": [i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1]}
        if label.terminology:
            segment["tags"] = {"TerminologyEntry": label.terminology.slicer_string()}
        segments.append(segment)
    dtype = np.uint8 if not present or max(present) < 256 else np.uint16
    segmentation = {"voxels": np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(dtype),
                    "ijkToLPS": index_to_lps(image), "segments": segments,
                    "containedRepresentationNames": ["Binary labelmap"],
                    "masterRepresentation": "Binary labelmap"}
    with atomic_file(out) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return out


def _terminology(segment: dict) -> Terminology | None:
    term = segment.get("terminology")
    if not term:
        return None

    def code(key: str):
        value = term.get(key)
        if value and len(value) == 3 and all(value):
            return (str(value[0]), str(value[1]), str(value[2]))
        return None

    category, type_ = code("category"), code("type")
    if not (category and type_):
        return None
    terminology = Terminology(category, type_, code("typeModifier"))
    return None if terminology.is_slicer_default() else terminology  # Slicer's placeholder, not a code


def read_seg_nrrd(path: str | os.PathLike) -> tuple[sitk.Image, LabelTable, list[str]]:
    """A `.seg.nrrd` file as (UInt16 label map, label table, warnings)."""
    import slicerio

    from coralbay.io.header_checks import check_compressed_data, check_header

    p = Path(path)
    check_compressed_data(check_header(p))  # pynrrd does not verify a gzip stream's end
    try:
        segmentation = slicerio.read_segmentation(str(p))
    except Exception as exc:  # noqa: BLE001 - pynrrd/slicerio raise many types for broken files
        raise InputError(f"The file {p} is not a readable Slicer segmentation ({exc}).") from None
    voxels = np.asarray(segmentation["voxels"])
    layers = voxels if voxels.ndim == 4 else voxels[None]
    segments = segmentation.get("segments", [])
    if not segments:
        raise InputError(f"The Slicer segmentation {p} contains no segments.")
    single_layer = layers.shape[0] == 1
    labels = np.zeros(layers.shape[1:], dtype=np.uint16)
    covered = np.zeros(layers.shape[1:], dtype=np.uint8)
    table_labels, used_names = [], set()
    for number, segment in enumerate(segments, start=1):
        source_value = int(segment.get("labelValue", 1))
        mask = layers[int(segment.get("layer", 0))] == source_value
        value = source_value if single_layer else number  # values of different layers may repeat
        labels[mask] = value
        covered += mask
        name = str(segment.get("name") or f"segment {number}")
        if name.lower() in used_names:
            name = f"{name} ({number})"
        used_names.add(name.lower())
        color = tuple(int(round(float(c) * 255)) for c in segment.get("color", [])[:3]) or distinct_color(number - 1)
        table_labels.append(Label(value, name, color, _terminology(segment)))  # type: ignore[arg-type]
    warnings = []
    overlapping = int(np.count_nonzero(covered > 1))
    if overlapping:
        warnings.append(f"Segments of {p.name} overlap in {overlapping} voxels; a label map holds one "
                        "label per voxel, so the segment listed later is kept there.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (matrix[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in matrix[:3, 3]))
    return image, LabelTable(table_labels), warnings

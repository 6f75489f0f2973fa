"""DICOM Segmentation (SEG) objects <-> label maps with their label table (highdicom).

Reading: the label map lies on the grid of the referenced DICOM series when that folder is given
(frames are matched to source images by SOP instance, ignoring stored plane positions, because
some writers store frames in reverse order), otherwise on the grid that the SEG's own plane
positions define (slices ordered along the normal of the image plane, as a DICOM series is read).
Only when neither is possible is the series required.

Writing: a BINARY SEG whose frames reference the source series' images one by one. DICOM needs
segment numbers 1..N, so label values are renumbered in increasing order; names, colours and
terminology codes carry the identity of each structure.
"""

from __future__ import annotations

import os
import warnings as warnings_module
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay import __version__
from coralbay.atomic import atomic_file
from coralbay.errors import InputError
from coralbay.grid.resample import bring_onto_grid, same_grid
from coralbay.io.labels import Label, LabelTable, Terminology, TISSUE, distinct_color
from coralbay.io.volumes import dicom_series_files, read_volume

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
GENERIC_TYPE = ("SCT", "85756007", "Tissue")  # Slicer's default for a segment without terminology
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (the "DICM" marker after the 128-byte preamble)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _code(item) -> tuple[str, str, str]:
    return (str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning))


def _label_of_segment(description, used_names: set[str]) -> Label:
    number = int(description.SegmentNumber)
    name = str(getattr(description, "SegmentLabel", "") or f"segment {number}").strip() or f"segment {number}"
    if name.lower() in used_names:  # DICOM allows duplicate labels; a label table does not
        name = f"{name} (segment {number})"
    used_names.add(name.lower())
    color = distinct_color(number - 1)
    if "RecommendedDisplayCIELabValue" in description:
        from highdicom.color import CIELabColor

        color = CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(clip=True)
    terminology = None
    if "SegmentedPropertyCategoryCodeSequence" in description and "SegmentedPropertyTypeCodeSequence" in description:
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        modifier = None
        if "SegmentedPropertyTypeModifierCodeSequence" in type_item:
            modifier = _code(type_item.SegmentedPropertyTypeModifierCodeSequence[0])
        terminology = Terminology(_code(description.SegmentedPropertyCategoryCodeSequence[0]),
                                  _code(type_item), modifier)
    return Label(number, name, tuple(int(c) for c in color), terminology)  # type: ignore[arg-type]


def _combine_segments(stack: np.ndarray, numbers: list[int], fractional: bool) -> tuple[np.ndarray, int]:
    """One label per voxel from a (..., segment) stack; the higher segment number wins overlaps."""
    labels = np.zeros(stack.shape[:-1], dtype=np.uint16)
    covered = np.zeros(stack.shape[:-1], dtype=np.uint8)
    for index, number in sorted(enumerate(numbers), key=lambda item: item[1]):
        mask = stack[..., index] >= 0.5 if fractional else stack[..., index] > 0
        labels[mask] = number
        covered += mask
    return labels, int(np.count_nonzero(covered > 1))


def read_dicom_seg(path: str | os.PathLike, series_dir: str | os.PathLike | None = None,
                   series: str | None = None) -> tuple[sitk.Image, LabelTable, list[str]]:
    """A DICOM SEG as (UInt16 label map, label table, warnings); label value = segment number.
    `series_dir` (a series or study folder, `series` choosing in a study) gives the grid."""
    import highdicom as hd
    import pydicom

    p = Path(path)
    try:
        header = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise InputError(f"The file {p} is not a readable DICOM file ({exc}).") from None
    if str(getattr(header, "SOPClassUID", "")) != SEG_SOP_CLASS_UID:
        raise InputError(f"The DICOM file {p} is not a Segmentation (SEG) object.")
    try:
        seg = hd.seg.segread(p)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"The DICOM SEG {p} cannot be decoded ({exc}).") from None
    numbers = list(seg.segment_numbers)
    if not numbers:
        raise InputError(f"The DICOM SEG {p} contains no segments.")
    used: set[str] = set()
    table = LabelTable([_label_of_segment(seg.get_segment_description(n), used) for n in numbers])
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    warnings: list[str] = []
    if series_dir is not None:
        image, stack = _on_series_grid(seg, p, Path(series_dir), warnings, series)
    else:
        image, stack = _on_own_grid(seg, p)
    labels, overlapping = _combine_segments(stack, numbers, fractional)
    if overlapping:
        warnings.append(f"Segments of the DICOM SEG {p.name} overlap in {overlapping} voxels; a label "
                        "map holds one label per voxel, so the higher segment number is kept there.")
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out, table, warnings


def _on_own_grid(seg, path: Path) -> tuple[sitk.Image, np.ndarray]:
    """The SEG on the grid of its own plane positions, stacked like a DICOM series."""
    try:
        volume = seg.get_volume(combine_segments=False)
    except Exception as exc:  # noqa: BLE001 - highdicom raises ValueError/RuntimeError for irregular frames
        raise InputError(f"The DICOM SEG {path} does not define a regular 3D grid by itself ({exc}); "
                         "give its source DICOM series with --dicom-series DIR.") from None
    stack = np.asarray(volume.array)  # (slice, row, column, segment)
    if stack.ndim == 3:
        stack = stack[..., None]
    if stack.shape[0] < 2:
        raise InputError(f"The frames of the DICOM SEG {path} lie on a single plane, which does not define "
                         "a 3D grid; give its source DICOM series with --dicom-series DIR.")
    slice_dir, row_dir, col_dir = (np.asarray(v, dtype=float) for v in volume.unit_vectors())
    spacing_slice, spacing_row, spacing_col = volume.spacing
    origin = np.asarray(volume.position, dtype=float)
    # Stack slices along the image plane's normal (row direction x column direction), like GDCM.
    if np.dot(np.cross(col_dir, row_dir), slice_dir) < 0:
        origin = origin + slice_dir * spacing_slice * (stack.shape[0] - 1)
        slice_dir = -slice_dir
        stack = stack[::-1]
    image = sitk.Image(int(stack.shape[2]), int(stack.shape[1]), int(stack.shape[0]), sitk.sitkUInt8)
    image.SetSpacing((float(spacing_col), float(spacing_row), float(spacing_slice)))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(v) for v in np.column_stack([col_dir, row_dir, slice_dir]).ravel()))
    return image, np.ascontiguousarray(stack)


def _series_uids(files: list[str]) -> tuple[str, list[str]]:
    headers = [_source_header(f) for f in files]
    return str(headers[0].get("SeriesInstanceUID", "")), [str(h.SOPInstanceUID) for h in headers]


def _referenced_series(seg) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in getattr(seg, "ReferencedSeriesSequence", [])}


def _on_series_grid(seg, path: Path, series_dir: Path, warnings: list[str], chosen: str | None = None
                    ) -> tuple[sitk.Image, np.ndarray]:
    """The SEG on the grid of its source series, frames matched to source images by instance."""
    series = read_volume(series_dir, chosen)
    files = dicom_series_files(series_dir, chosen)
    series_uid, instance_uids = _series_uids(files)
    referenced = _referenced_series(seg)
    if referenced and series_uid not in referenced:
        raise InputError(f"The DICOM SEG {path} references series {', '.join(sorted(referenced))}, but "
                         f"{series_dir} holds series {series_uid}.")
    try:
        stack = seg.get_pixels_by_source_instance(instance_uids, ignore_spatial_locations=True,
                                                  assert_missing_frames_are_empty=True)
        return series, np.asarray(stack)
    except Exception:  # noqa: BLE001 - frames not derived image by image: go through physical space
        image, stack = _on_own_grid(seg, path)
    layers = []
    for index in range(stack.shape[-1]):
        layer = sitk.GetImageFromArray(np.ascontiguousarray(stack[..., index]))
        layer.CopyInformation(image)
        layers.append(sitk.GetArrayFromImage(bring_onto_grid(layer, series).image))
    warnings.append(f"The frames of the DICOM SEG {path.name} do not reference the series' images one "
                    "by one; it was resampled onto the series grid (nearest neighbour).")
    return series, np.stack(layers, axis=-1)


def _source_header(path: str):
    """A source image's header, cleaned of empty values highdicom refuses to copy.

    Some anonymisers blank the SOP class and instance UIDs in the data set but leave them in the
    file meta information, where they are the same by definition: take them from there.
    """
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
        del dataset.SpecificCharacterSet  # empty means the default repertoire
    meta = getattr(dataset, "file_meta", None)
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not dataset.get(keyword) and meta is not None and meta.get(meta_keyword):
            setattr(dataset, keyword, meta.get(meta_keyword))
    return dataset


def _check_referencable(sources: list, series_dir) -> None:
    """A SEG must name the study, series, frame of reference and images it belongs to."""
    needed = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID")
    missing = [k for k in needed if any(not str(ds.get(k, "") or "").strip() for ds in sources)]
    if missing:
        raise InputError(f"The DICOM series in {series_dir} has empty {', '.join(missing)} (probably removed by "
                         "anonymisation), so a DICOM SEG cannot reference it; export NIfTI, NRRD or .seg.nrrd instead.")


def _coded(code: tuple[str, str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])


SAME_REGION_COVERAGE = 0.99  # a label map stored another way (flipped axes) still covers its series


def _refuse_other_region(labels: sitk.Image, series: sitk.Image, series_dir) -> None:
    """A SEG says its segments were made on the referenced images: refuse labels whose field of
    view is not that series' (another scan's, a phantom's) instead of resampling them onto it."""
    try:
        match = bring_onto_grid(labels, series)
    except InputError:
        match = None  # disjoint fields of view
    covered = 0.0 if match is None else match.coverage
    if match is None or covered < SAME_REGION_COVERAGE or match.lost_reference_voxels:
        outside = ", and labels lie outside it" if match is not None and match.lost_reference_voxels else ""
        raise InputError(f"The label map does not lie on the grid of the DICOM series in {series_dir} (it "
                         f"covers {100 * covered:.0f}% of the series' field of view{outside}); a DICOM SEG "
                         "must reference the images its labels were made on.")


def write_dicom_seg(image: sitk.Image, table: LabelTable, series_dir: str | os.PathLike,
                    output: str | os.PathLike, algorithm_type: str = "AUTOMATIC",
                    series: str | None = None) -> tuple[Path, list[str]]:
    """Write `image` (a label map on the series grid) as a DICOM SEG referencing that series (of
    the study in `series_dir`, chosen by `series` as `read_volume` does)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out = Path(output)
    if algorithm_type not in ALGORITHM_TYPES:
        raise InputError(f"The segment algorithm type must be one of {', '.join(ALGORITHM_TYPES)}.")
    warnings: list[str] = []
    files = dicom_series_files(series_dir, series)
    sources = [_source_header(f) for f in files]
    _check_referencable(sources, series_dir)
    source_volume = read_volume(series_dir, series)
    if not same_grid(image, source_volume):
        _refuse_other_region(image, source_volume, series_dir)
        image = bring_onto_grid(image, source_volume).image
        warnings.append(f"The label map does not lie on the grid of the series in {series_dir}; it was "
                        "resampled onto it (nearest neighbour) for the DICOM SEG.")
    labels = sitk.GetArrayFromImage(image)  # (slice, row, column), slices in the order of `files`
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        raise InputError("The label map has no labelled voxels inside the series; a DICOM SEG needs at "
                         "least one segment.")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, len(present) + 1)
    numbered = lut[labels].astype(np.uint8 if len(present) < 256 else np.uint16)

    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(name="CoralBay", version=__version__,
                                                       family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(present, start=1):
        label = table.by_value(value) or Label(value, f"label {value}", distinct_color(value - 1))
        term = label.terminology or Terminology(TISSUE, GENERIC_TYPE)
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name[:64],
            segmented_property_category=_coded(term.category),
            segmented_property_type=_coded(term.type),
            algorithm_type=algorithm_type, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"{label.name[:60]} ({value})",
            display_color=hd.color.CIELabColor.from_rgb(*label.color))
        if term.modifier:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(term.modifier)]
        descriptions.append(description)

    source_number = int(getattr(sources[0], "SeriesNumber", 0) or 0)
    try:
        with warnings_module.catch_warnings():
            warnings_module.simplefilter("ignore")  # highdicom's remarks on the source's names etc.
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=numbered, segmentation_type="BINARY",
                segment_descriptions=descriptions, series_instance_uid=hd.UID(),
                series_number=source_number + 1000 if source_number < 99000 else 99999,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="CoralBaySlicer",
                manufacturer_model_name="coralbay", software_versions=__version__,
                device_serial_number="none", series_description="CoralBay segmentation",
                content_label="SEGMENTATION", content_description="Segmentation exported by CoralBaySlicer")
    except Exception as exc:  # noqa: BLE001 - highdicom validates the sources and says why
        raise InputError(f"A DICOM SEG cannot be made for the series in {series_dir} ({exc}).") from None
    with atomic_file(out) as tmp:
        seg.save_as(tmp)
    return out, warnings

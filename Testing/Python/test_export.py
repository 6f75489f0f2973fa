"""`coralbay export`: NIfTI/NRRD with label sidecars, Slicer .seg.nrrd round trip (names, colours,
terminology), per-structure STL/OBJ meshes in LPS (sphere phantom volume), and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from coralbay.errors import CoralBayError
from coralbay.export import export_labels
from coralbay.io.labels import LabelTable, find_label_table
from coralbay.io.seg_nrrd import read_seg_nrrd

TABLE = {"labels": [
    {"value": 2, "name": "kidney_right", "color": [185, 102, 83],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "64033007", "Kidney"],
                     "modifier": ["SCT", "24028007", "Right"]}},
    {"value": 5, "name": "liver", "color": [221, 130, 101],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}},
]}


@pytest.fixture
def small_seg(shared_data, tmp_path):
    """The real TotalSegmentator labels (stored with x and y flipped), reduced to two structures."""
    seg = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg.nii.gz"))
    array = sitk.GetArrayFromImage(seg)
    array[(array != 2) & (array != 5)] = 0
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(seg)
    path = tmp_path / "two.nii.gz"
    sitk.WriteImage(image, str(path))
    (tmp_path / "table.json").write_text(json.dumps(TABLE))
    return path, image, tmp_path / "table.json"


def test_nifti_and_nrrd_keep_voxels_geometry_and_names(cli, small_seg, tmp_path):
    path, image, table = small_seg
    result = cli("export", path, "--format", "nifti", "--output", tmp_path / "out.nii.gz", "--labels", table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out.nii.gz")
    export_labels(path, "nrrd", tmp_path / "out.nrrd", label_table=table)
    for out in (tmp_path / "out.nii.gz", tmp_path / "out.nrrd"):
        back = sitk.ReadImage(str(out))
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
        assert back.GetDirection() == pytest.approx(image.GetDirection())
        assert back.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
        sidecar = find_label_table(out)
        assert [(lab.value, lab.name) for lab in sidecar] == [(2, "kidney_right"), (5, "liver")]
        assert sidecar.by_name("kidney_right").terminology.modifier == ("SCT", "24028007", "Right")


def test_seg_nrrd_round_trip_keeps_names_colours_terminology(small_seg, tmp_path):
    path, image, table = small_seg
    out = export_labels(path, "seg.nrrd", tmp_path / "out.seg.nrrd", label_table=table)
    # read back with slicerio directly (what Slicer stores) ...
    segmentation = slicerio.read_segmentation(str(out))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert set(segments) == {"kidney_right", "liver"}
    assert np.allclose(segments["liver"]["color"], np.array([221, 130, 101]) / 255, atol=1e-5)
    kidney = segments["kidney_right"]["terminology"]
    assert kidney["type"] == ["SCT", "64033007", "Kidney"] and kidney["typeModifier"] == ["SCT", "24028007", "Right"]
    assert kidney["category"] == ["SCT", "123037004", "Anatomical Structure"]
    assert segments["liver"]["labelValue"] == 5  # label values are kept
    # ... and with our reader: the same label map on the same grid, the same table
    back, back_table, warnings = read_seg_nrrd(out)
    assert warnings == []
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert back_table.to_dict() == LabelTable.from_dict(TABLE).to_dict()


def sphere_phantom(spacing, direction, radius=20.0):
    size = (64, 70, 36)
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((12.0, -30.0, 55.0))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((31.3, 34.6, 17.2)))
    k, j, i = np.indices(size[::-1])
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3) * np.asarray(spacing)
    points = index @ np.asarray(direction).reshape(3, 3).T + np.asarray(image.GetOrigin())
    inside = (np.linalg.norm(points - centre, axis=1) <= radius).reshape(size[::-1])
    phantom = sitk.GetImageFromArray(inside.astype(np.uint8) * 3)
    phantom.CopyInformation(image)
    return phantom, centre


def read_mesh(path):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader

    reader = vtkSTLReader() if path.suffix == ".stl" else vtkOBJReader()
    reader.SetFileName(str(path))
    reader.Update()
    mesh = reader.GetOutput()
    points = vtk_to_numpy(mesh.GetPoints().GetData()).astype(float)
    triangles = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return points, triangles


@pytest.mark.parametrize("spacing, direction", [
    ((1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    ((0.8, 0.7, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),  # anisotropic, stored like a RAS NIfTI
])
def test_stl_sphere_volume_and_lps_position(spacing, direction, tmp_path):
    phantom, centre = sphere_phantom(spacing, direction)
    sitk.WriteImage(phantom, str(tmp_path / "sphere.nrrd"))
    (tmp_path / "sphere.labels.json").write_text(json.dumps({"3": "ball/1"}))
    folder = export_labels(tmp_path / "sphere.nrrd", "stl", tmp_path / "meshes")
    (stl,) = folder.iterdir()
    assert stl.name == "ball_1.stl"
    assert stl.read_bytes()[:9] == b"SPACE=LPS"
    points, triangles = read_mesh(stl)
    v0, v1, v2 = (points[triangles[:, n]] for n in range(3))
    signed_volume = np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0  # > 0: normals point outwards
    analytic = 4.0 / 3.0 * np.pi * 20.0 ** 3
    assert signed_volume == pytest.approx(analytic, rel=0.02)
    assert np.allclose(points.mean(axis=0), centre, atol=0.5)  # in LPS millimetres, where the sphere is
    assert np.linalg.norm(points - centre, axis=1).mean() == pytest.approx(20.0, abs=0.5)


def test_obj_meshes_one_per_structure(small_seg, tmp_path):
    path, image, table = small_seg
    folder = export_labels(path, "obj", tmp_path / "objs", label_table=table)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["kidney_right.obj", "liver.obj"]
    text = (folder / "liver.obj").read_text()
    assert text.startswith("# SPACE=LPS") and "\nf " in text


def test_dicom_seg_input_exports_to_nifti_with_its_names(shared_data, tmp_path):
    out = export_labels(shared_data / "dcmqi" / "liver.dcm", "nifti", tmp_path / "liver.nii.gz")
    assert [lab.name for lab in find_label_table(out)] == ["Liver"]
    expected = sitk.ReadImage(str(shared_data / "dcmqi" / "liver_seg.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(expected))


def test_bad_export_requests(cli, small_seg, tmp_path):
    path, image, table = small_seg
    empty = sitk.Image(image)
    empty *= 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    result = cli("export", tmp_path / "empty.nii.gz", "--format", "stl", "--output", tmp_path / "m")
    assert result.returncode == 1 and "no labelled voxels" in result.stderr and not (tmp_path / "m").exists()
    with pytest.raises(CoralBayError, match="must end in"):
        export_labels(path, "nrrd", tmp_path / "x.seg.nrrd")
    with pytest.raises(CoralBayError, match="must end in"):
        export_labels(path, "nifti", tmp_path / "x.nrrd")
    with pytest.raises(CoralBayError, match="does not exist"):
        export_labels(path, "nifti", tmp_path / "missing" / "x.nii.gz")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CoralBayError, match="other files"):
        export_labels(path, "stl", busy)
    assert (busy / "notes.txt").read_text() == "mine"
    assert cli("export", path, "--format", "png", "--output", tmp_path / "x.png").returncode == 2
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]

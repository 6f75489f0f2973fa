"""Bad input to `coralbay compare`: one clear sentence, a non-zero exit code, and no output
folder (nor any temporary leftover) unless the result still makes sense (then a warning)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.errors import CoralBayError
from coralbay.review import compare_label_maps


def write(array: np.ndarray, path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


def cube(value: int = 1, dtype=np.uint8) -> np.ndarray:
    array = np.zeros((8, 16, 16), dtype=dtype)
    array[2:6, 4:12, 4:12] = value
    return array


def assert_failed_cleanly(result, out, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("coralbay: error: ") and "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]
    return lines[-1]


def test_non_integer_label_map(cli, tmp_path):
    pred = write(cube().astype(np.float32) * 0.5, tmp_path / "pred.nii.gz")
    ref = write(cube(), tmp_path / "ref.nii.gz")
    message = assert_failed_cleanly(cli("compare", pred, ref, "--output", tmp_path / "out"), tmp_path / "out")
    assert "non-integer" in message


def test_empty_prediction(tmp_path):
    pred = write(np.zeros((8, 16, 16), np.uint8), tmp_path / "pred.nii.gz")
    ref = write(cube(), tmp_path / "ref.nii.gz")
    with pytest.raises(CoralBayError, match="prediction .* no labelled voxels"):
        compare_label_maps(pred, ref, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz", "ref.nii.gz"]


def test_disjoint_fields_of_view_on_real_scans(cli, shared_data, tmp_path):
    """The small TotalSegmentator crop and the DICOM-series labels cover different parts of space."""
    result = cli("compare", shared_data / "totalseg" / "example_seg.nii.gz",
                 shared_data / "totalseg" / "example_seg_dicom.nii.gz", "--output", tmp_path / "out")
    assert "do not overlap" in assert_failed_cleanly(result, tmp_path / "out")


def test_negative_tolerance_is_a_usage_error(cli, tmp_path):
    ref = write(cube(), tmp_path / "ref.nii.gz")
    result = cli("compare", ref, ref, "--output", tmp_path / "out", "--tolerance", "-1")
    assert result.returncode == 2 and "tolerance" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, array, words", [
    ("negative", cube(-3, np.int16), "negative"),
    ("huge", cube(70000, np.int32), "above 65535"),
    ("image", np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16), "looks like an image"),
    ("empty reference", np.zeros((8, 16, 16), np.uint8), "no labelled voxels"),
])
def test_bad_reference_maps(tmp_path, case, array, words):
    pred = write(cube(), tmp_path / "pred.nii.gz")
    ref = write(array, tmp_path / "ref.nii.gz")
    with pytest.raises(CoralBayError, match=words):
        compare_label_maps(pred, ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_inputs_and_bad_mapping(tmp_path):
    pred = write(cube(), tmp_path / "pred.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("not an image")
    with pytest.raises(CoralBayError, match="cannot be read"):
        compare_label_maps(pred, tmp_path / "notes.nii.gz", tmp_path / "out")
    with pytest.raises(CoralBayError, match="is a folder"):
        compare_label_maps(pred, tmp_path, tmp_path / "out")
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"pairs": [{"prediction": 1, "reference": "liver"}]}))
    with pytest.raises(CoralBayError, match="'liver'"):
        compare_label_maps(pred, pred, tmp_path / "out", mapping_path=mapping)
    mapping.write_text(json.dumps({"pairs": [{"prediction": 1, "reference": 1}, {"prediction": 1, "reference": 1}]}))
    with pytest.raises(CoralBayError, match="twice"):
        compare_label_maps(pred, pred, tmp_path / "out", mapping_path=mapping)
    assert not (tmp_path / "out").exists()


def test_structure_missing_on_one_side_is_a_warning_not_an_error(tmp_path):
    pred = cube()
    ref = cube()
    ref[6:8, 0:3, 0:3] = 2  # a structure the prediction does not have
    pred_path, ref_path = write(pred, tmp_path / "pred.nii.gz"), write(ref, tmp_path / "ref.nii.gz")
    compare_label_maps(pred_path, ref_path, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    missed = metrics["structures"][1]
    assert missed["reference_value"] == 2 and missed["dice"] == 0.0 and missed["hd95_mm"] is None
    assert any("missing from the prediction" in w for w in metrics["warnings"])


def test_partial_overlap_warns_and_counts_outside_as_background(tmp_path):
    pred = write(cube(), tmp_path / "pred.nii.gz")
    ref = write(cube()[:, :, 6:], tmp_path / "ref.nii.gz", origin=(6.0, 0.0, 0.0))  # right part only
    metrics = compare_label_maps(pred, ref, tmp_path / "out")
    assert metrics["reference_resampled"] is True
    assert any("covers" in w for w in metrics["warnings"])
    assert metrics["structures"][0]["fp_voxels"] == 4 * 8 * 2  # the columns the reference cannot see


def test_existing_folders_are_protected(tmp_path):
    pred = write(cube(), tmp_path / "pred.nii.gz")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(CoralBayError, match="not an earlier review"):
        compare_label_maps(pred, pred, precious)
    assert (precious / "thesis.txt").read_text() == "keep me"
    # an earlier review survives a failed run untouched, and is replaced by a successful one
    review = tmp_path / "review"
    compare_label_maps(pred, pred, review)
    before = (review / "metrics.json").read_text()
    with pytest.raises(CoralBayError):
        compare_label_maps(pred, write(np.zeros((8, 16, 16), np.uint8), tmp_path / "empty.nii.gz"), review)
    assert (review / "metrics.json").read_text() == before
    shifted = cube()
    shifted[:, :, 1:] = shifted[:, :, :-1].copy()
    compare_label_maps(write(shifted, tmp_path / "shifted.nii.gz"), pred, review)
    assert (review / "metrics.json").read_text() != before
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name or ".old-" in p.name]

"""segment's --roi, --structures and --probabilities, and classify for a scan and around a point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli_many


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A 96 x 88 x 64 mm oblique-free CT-like volume: air, a soft-tissue body, a bright block."""
    rng = np.random.default_rng(0)
    array = np.full((16, 22, 24), -1000.0, np.float32)  # (z, y, x), 4 mm voxels
    array[2:14, 3:19, 3:21] = 40 + rng.normal(0, 20, (12, 16, 18))
    array[5:10, 6:12, 5:11] = 300
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    image.SetOrigin((-40.0, -30.0, 100.0))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def full_run(small_ct, tiny_seg_bundle, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("full") / "labels.nii.gz"
    probs = out.parent / "probs"
    result = run_cli("segment", small_ct, "-m", tiny_seg_bundle, "-o", out, "--probabilities", probs,
                     "--progress", "none")
    assert result.returncode == 0, result.stderr
    return out, probs


def test_probabilities_are_written_per_structure_on_the_input_grid(full_run, small_ct):
    labels_path, probs = full_run
    image = sitk.ReadImage(str(small_ct))
    assert sorted(p.name for p in probs.iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    maps = {}
    for name in ("liver", "spleen"):
        prob = sitk.ReadImage(str(probs / f"{name}.nii.gz"))
        assert prob.GetSize() == image.GetSize() and prob.GetOrigin() == pytest.approx(image.GetOrigin())
        maps[name] = sitk.GetArrayFromImage(prob)
        assert maps[name].min() >= 0 and maps[name].max() <= 1
    background = 1 - maps["liver"] - maps["spleen"]
    # The label map is the argmax of the same probabilities (ties aside).
    argmax = np.argmax(np.stack([background, maps["liver"], maps["spleen"]]), axis=0)
    assert np.mean(argmax == labels) > 0.99


def test_structures_keeps_only_the_named_ones(full_run, small_ct, tiny_seg_bundle, tmp_path):
    out = tmp_path / "spleen.nii.gz"
    result, bad = run_cli_many(
        ["segment", small_ct, "-m", tiny_seg_bundle, "-o", out, "--structures", "spleen", "--progress", "none"],
        ["segment", small_ct, "-m", tiny_seg_bundle, "-o", tmp_path / "x.nii.gz", "--structures", "heart"])
    assert result.returncode == 0, result.stderr
    only = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run[0])))
    assert set(np.unique(only)) <= {0, 2}
    assert np.array_equal(only == 2, full == 2)
    table = json.loads((tmp_path / "spleen.labels.json").read_text())
    assert [lab["name"] for lab in table["labels"]] == ["spleen"]
    assert bad.returncode == 1 and "Unknown structure(s) heart" in bad.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_roi_restricts_labels_to_the_box(full_run, small_ct, tiny_seg_bundle, tmp_path):
    image = sitk.ReadImage(str(small_ct))
    # A box in LPS mm around the voxel block x 5..11, y 6..12, z 5..10.
    lo = image.TransformIndexToPhysicalPoint((5, 6, 5))
    hi = image.TransformIndexToPhysicalPoint((11, 12, 10))
    out = tmp_path / "roi.nii.gz"
    roi = ",".join(f"{v:g}" for v in (*lo, *hi))
    result, outside = run_cli_many(
        ["segment", small_ct, "-m", tiny_seg_bundle, "-o", out, f"--roi={roi}", "--progress", "none"],
        ["segment", small_ct, "-m", tiny_seg_bundle, "-o", tmp_path / "o.nii.gz", "--roi", "900,900,900,950,950,950"])
    assert result.returncode == 0, result.stderr
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    inside = np.zeros_like(labels, bool)
    inside[5:11, 6:13, 5:12] = True  # (z, y, x), voxel centres inside the box
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run[0])))
    assert full[~inside].any(), "without --roi the random model labels voxels outside the box"
    assert not labels[~inside].any()
    assert outside.returncode == 1 and "ROI lies outside the volume" in outside.stderr


def test_classify_scan_and_point(small_ct, tiny_cls_bundle, tmp_path):
    image = sitk.ReadImage(str(small_ct))
    point = image.TransformIndexToPhysicalPoint((8, 9, 7))
    scan, near = run_cli_many(
        ["classify", small_ct, "-m", tiny_cls_bundle, "-o", tmp_path / "scan.json", "--progress", "jsonl"],
        ["classify", small_ct, "-m", tiny_cls_bundle, "-o", tmp_path / "point.json",
         "--point=" + ",".join(map(str, point)), "--progress", "none"])
    assert scan.returncode == 0, scan.stderr
    report = json.loads((tmp_path / "scan.json").read_text())
    assert set(report["probabilities"]) == {"negative", "positive"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["prediction"] in report["classes"] and report["point_lps"] is None
    result_event = [json.loads(line) for line in scan.stdout.splitlines()][-1]
    assert result_event["event"] == "result" and result_event["prediction"] == report["prediction"]
    assert near.returncode == 0, near.stderr
    point_report = json.loads((tmp_path / "point.json").read_text())
    assert point_report["point_lps"] == pytest.approx(list(point))
    assert point_report["windows"] == 1

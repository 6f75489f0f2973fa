"""`coralbay compare` end to end on real data: grid independence, the output folder and its
fixed interface, difference maps consistent with the metrics, label matching and the report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.io.labels import load_label_table
from coralbay.io.volumes import read_volume
from coralbay.review import OUTPUT_FILES, compare_label_maps

STRUCTURE_KEYS = {"name", "prediction_value", "reference_value", "dice", "iou", "precision", "sensitivity",
                  "prediction_volume_ml", "reference_volume_ml", "volume_difference_percent", "hausdorff_mm",
                  "hd95_mm", "assd_mm", "surface_dice", "tp_voxels", "fp_voxels", "fn_voxels"}
TOP_KEYS = {"prediction", "reference", "reference_resampled", "tolerance_mm", "structures",
            "unmatched_prediction", "unmatched_reference", "worst_error_lps", "warnings"}


@pytest.fixture(scope="module")
def seg_on_dicom_grid(shared_data, tmp_path_factory):
    """example_seg_dicom.nii.gz (stored LAS) on the DICOM series grid (LPS): flipping y is exact here."""
    las = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg_dicom.nii.gz"))
    series = read_volume(shared_data / "totalseg" / "example_ct_dicom")
    # Independent of our resampler: both grids cover the same voxel centres, y reversed.
    size = las.GetSize()
    for corner in [(0, 0, 0), (size[0] - 1, size[1] - 1, size[2] - 1), (7, 300, 11)]:
        flipped = (corner[0], size[1] - 1 - corner[1], corner[2])
        assert np.allclose(las.TransformIndexToPhysicalPoint(corner),
                           series.TransformIndexToPhysicalPoint(flipped), atol=1e-4)
    on_grid = sitk.GetImageFromArray(sitk.GetArrayFromImage(las)[:, ::-1, :].copy())
    on_grid.CopyInformation(series)
    path = tmp_path_factory.mktemp("grid") / "seg_on_dicom_grid.nii.gz"
    sitk.WriteImage(on_grid, str(path))
    return path


def test_grid_independence_las_file_against_dicom_grid(shared_data, seg_on_dicom_grid, tmp_path):
    las = shared_data / "totalseg" / "example_seg_dicom.nii.gz"
    out = tmp_path / "review"
    metrics = compare_label_maps(seg_on_dicom_grid, las, out, mapping_path=shared_data / "totalseg" / "labels.json")
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["reference_resampled"] is True
    assert len(metrics["structures"]) == 31
    assert all(s["dice"] == 1.0 and s["hausdorff_mm"] == 0.0 for s in metrics["structures"])
    assert metrics["unmatched_prediction"] == [] and metrics["unmatched_reference"] == []
    assert metrics["worst_error_lps"] is None
    assert any("resampled" in w for w in metrics["warnings"])
    difference = sitk.ReadImage(str(out / "difference.nii.gz"))
    assert difference.GetDirection() == pytest.approx(sitk.ReadImage(str(seg_on_dicom_grid)).GetDirection())


def test_grid_independence_on_the_anisotropic_scan_stored_in_another_orientation(shared_data, tmp_path):
    """The lung nodule (0.57 x 0.57 x 5 mm, LPS) against the same mask stored RAI (x and z flipped,
    axes permuted), both ways round: Dice 1, and outputs always on the prediction's grid."""
    label = sitk.ReadImage(str(shared_data / "pyradiomics" / "lung1_label.nrrd"))
    where = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)
    (z0, y0, x0), (z1, y1, x1) = where.min(axis=0), where.max(axis=0)
    box = label[int(x0) - 6:int(x1) + 7, int(y0) - 6:int(y1) + 7, int(z0) - 2:int(z1) + 3]
    other = sitk.PermuteAxes(sitk.DICOMOrient(box, "RAI"), [1, 0, 2])
    assert other.GetDirection() != box.GetDirection()
    sitk.WriteImage(box, str(tmp_path / "lps.nrrd"))
    sitk.WriteImage(other, str(tmp_path / "rai.nii.gz"))
    for pred, ref in (("lps.nrrd", "rai.nii.gz"), ("rai.nii.gz", "lps.nrrd")):
        review = tmp_path / f"review_{pred.split('.')[0]}"  # a folder: no file-like suffix
        metrics = compare_label_maps(tmp_path / pred, tmp_path / ref, review)
        assert metrics["reference_resampled"] is True
        assert [s["dice"] for s in metrics["structures"]] == [1.0]
        difference = sitk.ReadImage(str(review / "difference.nii.gz"))
        assert difference.GetDirection() == pytest.approx(sitk.ReadImage(str(tmp_path / pred)).GetDirection())
        assert difference.GetSize() == sitk.ReadImage(str(tmp_path / pred)).GetSize()


@pytest.fixture(scope="module")
def shifted_review(shared_data, tmp_path_factory):
    """TotalSegmentator labels shifted by one voxel, with two labels swapped and one removed,
    against the original; run through the command line with the CT."""
    tmp = tmp_path_factory.mktemp("shifted")
    seg = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(seg)
    pred = np.zeros_like(labels)
    pred[:, 1:, :] = labels[:, :-1, :]
    pred[pred == 4] = 0  # gallbladder missed entirely
    kidney_r, kidney_l = pred == 2, pred == 3
    pred[kidney_r], pred[kidney_l] = 3, 2  # kidneys swapped: label mismatch
    image = sitk.GetImageFromArray(pred)
    image.CopyInformation(seg)
    pred_path = tmp / "pred.nii.gz"
    sitk.WriteImage(image, str(pred_path))
    out = tmp / "review"
    from conftest import run_cli

    result = run_cli("compare", pred_path, shared_data / "totalseg" / "example_seg.nii.gz", "--output", out,
                     "--image", shared_data / "totalseg" / "example_ct_sm.nii.gz", "--tolerance", "2.5",
                     "--progress", "jsonl")
    assert result.returncode == 0, result.stderr
    return seg, pred, labels, out, result


def test_output_folder_holds_the_fixed_interface(shifted_review):
    seg, pred, labels, out, result = shifted_review
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert TOP_KEYS <= set(metrics)
    assert metrics["tolerance_mm"] == 2.5 and metrics["reference_resampled"] is False
    for structure in metrics["structures"]:
        assert STRUCTURE_KEYS <= set(structure)
    assert "NaN" not in (out / "metrics.json").read_text()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["name"] for r in rows] == [s["name"] for s in metrics["structures"]]
    assert float(rows[0]["dice"]) == pytest.approx(metrics["structures"][0]["dice"])
    table = load_label_table(out / "difference.labels.json")
    assert [(lab.value, lab.name) for lab in table] == [(1, "agreement"), (2, "false positive"),
                                                        (3, "false negative"), (4, "label mismatch")]
    assert len({lab.color for lab in table}) == 4
    png = (out / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: protocol lines only
    assert {e["event"] for e in events} == {"progress", "log", "result"}
    assert events[-1]["event"] == "result" and events[-1]["worst_error_lps"] == metrics["worst_error_lps"]
    assert [e["fraction"] for e in events if e["event"] == "progress"][-1] == 1.0
    assert any(e["event"] == "log" and e["level"] == "warning" for e in events)


def test_difference_map_agrees_with_the_metrics(shifted_review):
    seg, pred, labels, out, _ = shifted_review
    metrics = json.loads((out / "metrics.json").read_text())
    difference = sitk.ReadImage(str(out / "difference.nii.gz"))
    distance = sitk.ReadImage(str(out / "surface_distance.nii.gz"))
    for image in (difference, distance):  # exactly on the prediction's grid
        assert image.GetSize() == seg.GetSize() and image.GetOrigin() == pytest.approx(seg.GetOrigin())
        assert image.GetDirection() == pytest.approx(seg.GetDirection())
    assert distance.GetPixelID() == sitk.sitkFloat32
    diff = sitk.GetArrayFromImage(difference)
    dist = sitk.GetArrayFromImage(distance)
    # categories from first principles (values are matched one to one here)
    assert np.array_equal(diff == 1, (pred > 0) & (pred == labels))
    assert np.array_equal(diff == 2, (pred > 0) & (labels == 0))
    assert np.array_equal(diff == 3, (pred == 0) & (labels > 0))
    assert np.array_equal(diff == 4, (pred > 0) & (labels > 0) & (pred != labels))
    by_name = {s["name"]: s for s in metrics["structures"]}
    gallbladder = by_name["label 4"]
    assert gallbladder["dice"] == 0.0 and gallbladder["prediction_volume_ml"] == 0.0
    assert gallbladder["precision"] is None and gallbladder["volume_difference_percent"] == -100.0
    assert any("missing from the prediction" in w for w in metrics["warnings"])
    # signed distances: zero where the maps agree, > 0 outside the reference, < 0 inside
    assert np.all(dist[diff <= 1] == 0)
    assert np.all(dist[diff == 2] > 0)
    assert np.all(dist[(diff == 3) | (diff == 4)] < 0)
    assert np.abs(dist[diff >= 2]).min() >= min(seg.GetSpacing()) - 1e-6
    # the largest error region contains the reported point
    point = metrics["worst_error_lps"]
    index = seg.TransformPhysicalPointToIndex(point)
    assert diff[index[2], index[1], index[0]] >= 2
    # FP voxels of the first structure, counted in the map
    spleen = by_name["label 1"]
    assert spleen["fp_voxels"] == int(np.count_nonzero((pred == 1) & (labels != 1)))


def test_signed_distance_values_on_a_known_shift(tmp_path):
    """A box shifted by two voxels along x (2 mm): first outside layer +1 mm, +2 mm; inside -1, -2."""
    ref = np.zeros((10, 12, 16), dtype=np.uint8)
    ref[3:7, 3:9, 4:10] = 1
    pred = np.roll(ref, 2, axis=2)
    paths = []
    for name, array in (("pred.nrrd", pred), ("ref.nrrd", ref)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 0.7, 3.0))
        paths.append(tmp_path / name)
        sitk.WriteImage(image, str(paths[-1]))
    metrics = compare_label_maps(paths[0], paths[1], tmp_path / "review")
    dist = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "review" / "surface_distance.nii.gz")))
    assert np.allclose(dist[5, 5, 10:12], [1.0, 2.0])  # false positives beyond the reference
    assert np.allclose(dist[5, 5, 4:6], [-1.0, -2.0])  # false negatives: 1 and 2 mm from the nearest outside voxel
    assert metrics["structures"][0]["hausdorff_mm"] == pytest.approx(2.0)
    assert metrics["worst_error_lps"] is not None


def test_labels_matched_by_name_through_sidecars_and_by_mapping(tmp_path):
    """Prediction labels 1,2 ("liver", "spleen") against reference 7,9 ("Spleen", "liver"); a third
    reference label has no partner; then an explicit mapping pairs by value and name."""
    pred = np.zeros((8, 20, 20), dtype=np.uint8)
    pred[2:6, 2:8, 2:8] = 1
    pred[2:6, 10:16, 10:16] = 2
    ref = np.zeros_like(pred)
    ref[2:6, 2:8, 2:8] = 9
    ref[2:6, 10:16, 10:17] = 7
    ref[2:6, 17:19, 2:5] = 3
    for name, array in (("pred", pred), ("ref", ref)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "pred.labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    (tmp_path / "ref.labels.json").write_text(json.dumps(
        {"labels": [{"value": 9, "name": "Liver", "color": [200, 100, 100]},
                    {"value": 7, "name": "Spleen", "color": [100, 100, 200]},
                    {"value": 3, "name": "tumour", "color": [250, 250, 0]}]}))
    metrics = compare_label_maps(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "by_name")
    assert metrics["matched_by"] == "name"
    pairs = {(s["name"], s["prediction_value"], s["reference_value"]) for s in metrics["structures"]}
    assert pairs == {("liver", 1, 9), ("spleen", 2, 7)}
    assert metrics["unmatched_reference"] == [{"value": 3, "name": "tumour"}]
    assert metrics["structures"][0]["dice"] == 1.0 and metrics["structures"][1]["dice"] < 1.0

    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"pairs": [{"prediction": 1, "reference": "tumour"},
                                             {"prediction": "spleen", "reference": 7}]}))
    metrics = compare_label_maps(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "by_map",
                                 mapping_path=mapping)
    assert metrics["matched_by"] == "mapping"
    assert [(s["prediction_value"], s["reference_value"]) for s in metrics["structures"]] == [(1, 3), (2, 7)]
    assert metrics["structures"][0]["dice"] == 0.0
    assert metrics["unmatched_reference"] == [{"value": 9, "name": "Liver"}]
    diff = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "by_map" / "difference.nii.gz")))
    assert np.all(diff[3, 3, 3] == 4)  # liver vs unpaired reference "Liver": a mismatch

    (tmp_path / "pred.labels.json").unlink()
    (tmp_path / "ref.labels.json").unlink()
    metrics = compare_label_maps(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "by_value")
    assert metrics["matched_by"] == "value"
    assert [s["prediction_value"] for s in metrics["structures"]] == [1, 2, 3, 7, 9]  # all missed: Dice 0
    assert all(s["dice"] == 0.0 for s in metrics["structures"])
    assert metrics["unmatched_prediction"] == [] and metrics["unmatched_reference"] == []

    # With a table, the prediction says which structures it knows: the others are unmatched.
    (tmp_path / "pred.labels.json").write_text(json.dumps({"1": "label 1", "2": "label 2", "3": "label 3"}))
    metrics = compare_label_maps(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "by_value")
    assert [s["prediction_value"] for s in metrics["structures"]] == [1, 2, 3]
    assert [u["value"] for u in metrics["unmatched_reference"]] == [7, 9]



def test_engine_label_maps_are_reviewed_and_exported_with_their_names(shared_data, tmp_path):
    """A label map written as `coralbay segment` writes it (outputs.write_label_map: map + sidecar)
    is paired by name with the TotalSegmentator labels (liver 1 <-> 5, spleen 2 <-> 1), and its
    terminology survives export to .seg.nrrd."""
    from conftest import TINY_LABELS

    from coralbay.export import export_labels
    from coralbay.io.labels import LabelTable
    from coralbay.io.label_maps import write_label_map
    from coralbay.io.seg_nrrd import read_seg_nrrd

    seg = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg.nii.gz"))
    reference = sitk.GetArrayFromImage(seg)
    engine = np.zeros_like(reference)
    engine[reference == 5] = 1
    engine[np.roll(reference == 1, 1, axis=2)] = 2
    image = sitk.GetImageFromArray(engine)
    image.CopyInformation(seg)
    labels = write_label_map(image, LabelTable.from_dict(TINY_LABELS), tmp_path / "pred.nii.gz")
    metrics = compare_label_maps(labels, shared_data / "totalseg" / "example_seg.nii.gz", tmp_path / "review",
                                 mapping_path=shared_data / "totalseg" / "labels.json")
    assert metrics["matched_by"] == "name"
    by_name = {s["name"]: s for s in metrics["structures"]}
    assert (by_name["liver"]["prediction_value"], by_name["liver"]["reference_value"]) == (1, 5)
    assert by_name["liver"]["dice"] == 1.0 and 0 < by_name["spleen"]["dice"] < 1
    assert len(metrics["structures"]) == 2 and len(metrics["unmatched_reference"]) == 39
    _, table, _ = read_seg_nrrd(export_labels(labels, "seg.nrrd", tmp_path / "pred.seg.nrrd"))
    assert {lab.name: lab.terminology.type[1] for lab in table} == {"liver": "10200004", "spleen": "78961009"}

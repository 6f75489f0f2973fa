"""Review metrics agree with independent implementations on real scans.

- Dice equals SimpleITK's LabelOverlapMeasuresImageFilter (to 1e-6);
- Hausdorff, HD95, ASSD and surface Dice equal MONAI's metrics (same definitions) within 1e-3 mm,
  on the TotalSegmentator labels (3 mm) and on the anisotropic lung nodule (0.57 x 0.57 x 5 mm);
- the empty cases and the surface definition behave as documented.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import (compute_average_surface_distance, compute_hausdorff_distance,
                           compute_surface_dice)

from coralbay.review import compare_label_maps
from coralbay.review.metrics import overlap_metrics
from coralbay.review.surface import surface_metrics, surface_voxels


def erode_labels(labels: np.ndarray) -> np.ndarray:
    """Each voxel keeps its label only if all six face neighbours share it (a label-wise erosion)."""
    padded = np.pad(labels, 1)
    keep = np.ones(labels.shape, dtype=bool)
    for axis in range(3):
        for shift in (-1, 1):
            keep &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1] == labels
    return np.where(keep, labels, 0).astype(labels.dtype)


def shift_labels(labels: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """The label map moved by `shift` voxels (z, y, x), background coming in at the edges."""
    out = np.zeros_like(labels)
    src = tuple(slice(0, n - s) if s >= 0 else slice(-s, n) for n, s in zip(labels.shape, shift))
    dst = tuple(slice(s, n) if s >= 0 else slice(0, n + s) for n, s in zip(labels.shape, shift))
    out[dst] = labels[src]
    return out


def write_like(array: np.ndarray, like: sitk.Image, path) -> str:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return str(path)


def monai_surface(pred: np.ndarray, ref: np.ndarray, spacing_zyx, tolerance: float) -> dict:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    spacing = [float(s) for s in spacing_zyx]
    return {
        "hausdorff_mm": float(compute_hausdorff_distance(p, r, include_background=True, spacing=spacing)),
        "hd95_mm": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)),
        "assd_mm": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                          spacing=spacing)),
        "surface_dice": float(compute_surface_dice(p, r, [tolerance], include_background=True, spacing=spacing)),
    }


@pytest.fixture(scope="module")
def totalseg_eroded_review(shared_data, tmp_path_factory):
    """The TotalSegmentator labels (prediction) against an eroded and shifted copy (reference)."""
    tmp = tmp_path_factory.mktemp("totalseg")
    seg = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(seg)
    reference = shift_labels(erode_labels(labels), (1, 0, 1))
    ref_path = write_like(reference, seg, tmp / "reference.nii.gz")
    metrics = compare_label_maps(str(shared_data / "totalseg" / "example_seg.nii.gz"), ref_path, tmp / "review",
                                 mapping_path=str(shared_data / "totalseg" / "labels.json"), tolerance_mm=3.0)
    return seg, labels, reference, metrics


def test_dice_equals_simpleitk_label_overlap(totalseg_eroded_review):
    seg, labels, reference, metrics = totalseg_eroded_review
    pred_image = sitk.Cast(seg, sitk.sitkUInt16)
    ref_image = sitk.GetImageFromArray(reference.astype(np.uint16))
    ref_image.CopyInformation(seg)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(pred_image, ref_image)
    checked = 0
    for structure in metrics["structures"]:
        value = structure["prediction_value"]
        if value in np.unique(reference):
            assert structure["dice"] == pytest.approx(overlap.GetDiceCoefficient(value), abs=1e-6)
            assert structure["iou"] == pytest.approx(overlap.GetJaccardCoefficient(value), abs=1e-6)
            checked += 1
        else:  # eroded away: the documented empty-reference case
            assert structure["dice"] == 0.0 and structure["sensitivity"] is None
            assert structure["hausdorff_mm"] is None and structure["surface_dice"] == 0.0
    assert checked >= 30
    assert all(s["matched_by"] == "name" for s in [metrics])


def test_surface_distances_equal_monai_on_totalseg(totalseg_eroded_review):
    seg, labels, reference, metrics = totalseg_eroded_review
    spacing_zyx = seg.GetSpacing()[::-1]
    checked = 0
    for structure in metrics["structures"]:
        pred = labels == structure["prediction_value"]
        ref = reference == structure["reference_value"]
        if not ref.any():
            continue
        expected = monai_surface(pred, ref, spacing_zyx, 3.0)
        for key, value in expected.items():
            assert structure[key] == pytest.approx(value, abs=1e-3), (structure["name"], key)
        checked += 1
    assert checked >= 30
    # An erosion plus a one-voxel shift must move surfaces: not every distance is 0.
    assert max(s["hausdorff_mm"] or 0 for s in metrics["structures"]) >= 6.0


def test_surface_distances_equal_monai_on_anisotropic_lung_nodule(shared_data, tmp_path):
    """0.57 x 0.57 x 5 mm voxels: a one-slice shift must cost 5 mm, not 1 voxel."""
    label = sitk.ReadImage(str(shared_data / "pyradiomics" / "lung1_label.nrrd"))
    assert label.GetSpacing()[2] == pytest.approx(5.0)
    where = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)
    (z0, y0, x0), (z1, y1, x1) = where.min(axis=0), where.max(axis=0)
    box = label[int(x0) - 8:int(x1) + 9, int(y0) - 8:int(y1) + 9, int(z0) - 2:int(z1) + 3]  # keeps geometry
    reference = sitk.GetArrayFromImage(box).astype(np.uint8)
    dilated = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.Cast(box, sitk.sitkUInt8), (1, 1, 0)))
    prediction = shift_labels(dilated.astype(np.uint8), (1, 0, 0))
    pred_path = write_like(prediction, box, tmp_path / "pred.nrrd")
    ref_path = write_like(reference, box, tmp_path / "ref.nrrd")
    metrics = compare_label_maps(pred_path, ref_path, tmp_path / "review", tolerance_mm=2.0)
    (nodule,) = metrics["structures"]
    expected = monai_surface(prediction > 0, reference > 0, box.GetSpacing()[::-1], 2.0)
    for key, value in expected.items():
        assert nodule[key] == pytest.approx(value, abs=1e-3), key
    assert nodule["hausdorff_mm"] >= 5.0  # the slice shift, in mm
    voxel_ml = np.prod(box.GetSpacing()) / 1000
    assert nodule["reference_volume_ml"] == pytest.approx((reference > 0).sum() * voxel_ml)
    assert metrics["reference_resampled"] is False


def test_surface_of_a_box_and_hand_computed_distances():
    """Boundary voxels are 6-connected faces; distances between voxel centres in mm."""
    ref = np.zeros((12, 12, 12), dtype=bool)
    ref[2:8, 3:9, 3:9] = True
    shell = surface_voxels(ref)
    assert shell.sum() == ref.sum() - ref[3:7, 4:8, 4:8].sum()  # everything but the 4x4x4 core
    touching = np.zeros((4, 4, 4), dtype=bool)
    touching[0:2] = True  # touches the image border: that side is surface too
    assert surface_voxels(touching)[touching].all()

    spacing = (3.0, 1.0, 0.5)  # z, y, x in mm
    moved = np.roll(ref, 2, axis=2)  # two voxels along x = 1 mm
    result = surface_metrics(moved, ref, spacing, tolerance_mm=1.0)
    assert result["hausdorff_mm"] == pytest.approx(1.0)
    assert result["surface_dice"] == pytest.approx(1.0)
    moved_z = np.roll(ref, 1, axis=0)  # one slice = 3 mm
    result = surface_metrics(moved_z, ref, spacing, tolerance_mm=1.0)
    assert result["hausdorff_mm"] == pytest.approx(3.0)
    assert 0 < result["surface_dice"] < 1
    same = surface_metrics(ref, ref, spacing, tolerance_mm=0.0)
    assert same == {"hausdorff_mm": 0.0, "hd95_mm": 0.0, "assd_mm": 0.0, "surface_dice": 1.0}


def test_nearest_surface_search_equals_a_distance_transform():
    """The k-d tree search against scipy's exact Euclidean distance transform, anisotropic spacing."""
    from scipy import ndimage

    from coralbay.review.surface import distances_to_surface

    rng = np.random.default_rng(7)
    a = ndimage.binary_opening(rng.random((14, 30, 30)) > 0.55, iterations=1)
    b = ndimage.binary_closing(rng.random((14, 30, 30)) > 0.45, iterations=1)
    sa, sb = surface_voxels(a), surface_voxels(b)
    spacing = (4.0, 0.6, 0.9)
    expected = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    assert np.allclose(distances_to_surface(sa, sb, spacing), expected, atol=1e-9)


def test_empty_cases_follow_the_documented_definitions():
    some = np.zeros((6, 6, 6), dtype=bool)
    some[2:4, 2:4, 2:4] = True
    none = np.zeros_like(some)
    pred_empty = overlap_metrics(none, some, 0.001)
    assert pred_empty["dice"] == 0 and pred_empty["sensitivity"] == 0 and pred_empty["precision"] is None
    assert pred_empty["volume_difference_percent"] == -100.0 and pred_empty["fn_voxels"] == 8
    ref_empty = overlap_metrics(some, none, 0.001)
    assert ref_empty["dice"] == 0 and ref_empty["precision"] == 0 and ref_empty["sensitivity"] is None
    assert ref_empty["volume_difference_percent"] is None and ref_empty["fp_voxels"] == 8
    both = overlap_metrics(none, none, 0.001)
    assert both["dice"] is None and both["iou"] is None
    assert surface_metrics(none, some, (1, 1, 1), 1.0) == {"hausdorff_mm": None, "hd95_mm": None,
                                                           "assd_mm": None, "surface_dice": 0.0}
    assert all(v is None for v in surface_metrics(none, none, (1, 1, 1), 1.0).values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in pred_empty.values())

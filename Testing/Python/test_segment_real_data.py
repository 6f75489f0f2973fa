"""Segmentation on real scans stored in different orientations: exact input geometry, faithful labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli_many
from coralbay.grid.model_grid import to_xyz
from coralbay.grid.resample import resample_to_grid
from coralbay.inference.preprocess import prepare
from coralbay.inference.segment import restore_to_input
from coralbay.io.label_maps import read_label_map
from coralbay.io.labels import LabelTable
from coralbay.io.volumes import read_volume

# (CT, reference labels): RAS-stored NIfTI, LPS NRRD with 5 mm slices, JPEG 2000 DICOM series
# whose labels are stored LAS (flipped y) and must be matched through physical space.
REAL_CASES = {
    "nifti-ras": ("totalseg/example_ct_sm.nii.gz", "totalseg/example_seg.nii.gz"),
    "nrrd-5mm": ("pyradiomics/lung1_image.nrrd", "pyradiomics/lung1_label.nrrd"),
    "dicom-j2k": ("totalseg/example_ct_dicom", "totalseg/example_seg_dicom.nii.gz"),
}
COREBAY_DEFAULT_PREPROCESSING = {"spacing_mm": [1.5, 1.5, 1.5], "intensity_window_hu": [-175, 250],
                                 "crop_foreground": True, "foreground_threshold_hu": -500,
                                 "foreground_margin_mm": 10, "antialias": True}


@pytest.fixture(scope="module")
def segmented(shared_data, tiny_seg_bundle, tmp_path_factory) -> dict:
    """`coralbay segment` of each real case (one interpreter runs the three commands): case -> (result, output)."""
    folder = tmp_path_factory.mktemp("segmented")
    outputs = {case: folder / case / "labels.nii.gz" for case in REAL_CASES}
    for out in outputs.values():
        out.parent.mkdir()
    results = run_cli_many(*[["segment", shared_data / ct, "--model", tiny_seg_bundle, "--output", outputs[case],
                              "--progress", "jsonl"] for case, (ct, _) in REAL_CASES.items()])
    return {case: (result, outputs[case]) for case, result in zip(REAL_CASES, results)}


@pytest.mark.parametrize("case", REAL_CASES)
def test_segment_writes_labels_on_exactly_the_input_grid(case, shared_data, segmented):
    ct, _ = REAL_CASES[case]
    result, out = segmented[case]
    assert result.returncode == 0, result.stderr
    image, labels = read_volume(shared_data / ct), sitk.ReadImage(str(out))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-6)
    assert labels.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert labels.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    assert labels.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16)
    table = json.loads((out.parent / "labels.labels.json").read_text())
    assert [lab["name"] for lab in table["labels"]] == ["liver", "spleen"]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["outputs"]["labels"] == str(out)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize("case", REAL_CASES)
def test_reference_labels_survive_preprocessing_and_return(case, shared_data):
    """One-hot reference labels go through the engine's own resampling onto the model grid and its
    restore path back; every structure over 1 mL keeps Dice >= 0.95."""
    ct, lab = REAL_CASES[case]
    image = read_volume(shared_data / ct)
    reference = sitk.Resample(read_label_map(shared_data / lab), image, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)  # onto the CT grid through physical space
    ref = sitk.GetArrayFromImage(reference)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    values = [int(v) for v in np.unique(ref) if v and (ref == v).sum() * voxel_ml > 1.0]
    assert values, "the reference has structures over 1 mL"
    prepared = prepare(image, COREBAY_DEFAULT_PREPROCESSING)
    one_hot = [to_xyz(sitk.GetArrayFromImage(resample_to_grid(sitk.Cast(reference == v, sitk.sitkFloat32),
                                                             prepared.grid, 1.0 if v == 0 else 0.0)))
               for v in [0] + values]
    table = LabelTable.generic(values)
    restored, _ = restore_to_input(np.stack(one_hot), prepared.grid, image, prepared.input_box, table, table, False)
    assert restored.GetSize() == image.GetSize()
    out = sitk.GetArrayViewFromImage(restored)
    dice = {v: 2 * np.sum((ref == v) & (out == v)) / (np.sum(ref == v) + np.sum(out == v)) for v in values}
    worst = min(dice, key=dice.get)
    assert dice[worst] >= 0.95, f"label {worst}: Dice {dice[worst]:.4f}"

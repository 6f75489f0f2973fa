"""The synthetic CT phantom: deterministic, exact label maps, documented HU, physical geometry, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO
from coralbay import cli
from coralbay import phantom as P
from coralbay.grid.resample import same_grid
from coralbay.io.labels import label_table_path_for, load_label_table

SMALL = (180.0, 150.0, 120.0)  # a small field of view keeps each phantom well under a second
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")  # never cut by the field of view


def arrays(ph: P.Phantom) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.labels)


def label_stats(ph: P.Phantom) -> dict[str, tuple[float, np.ndarray]]:
    """Volume (mL) and LPS centroid of each label present."""
    labels = sitk.GetArrayFromImage(ph.labels)
    voxel_ml = float(np.prod(ph.labels.GetSpacing())) / 1000.0
    out = {}
    for lab in P.PHANTOM_LABELS:
        idx = np.argwhere(labels == lab.value)
        if len(idx):
            centre_index = idx[:, ::-1].mean(axis=0).tolist()  # array (k, j, i) -> ITK (i, j, k)
            centroid = np.array(ph.labels.TransformContinuousIndexToPhysicalPoint(centre_index))
            out[lab.name] = (len(idx) * voxel_ml, centroid)
    return out


# ------------------------------------------------------------------------------------ determinism

def test_same_seed_gives_identical_phantom_and_other_seeds_differ():
    a = P.generate_phantom(11, size_mm=SMALL)  # random spacing, direction and lesions
    b = P.generate_phantom(11, size_mm=SMALL)
    c = P.generate_phantom(12, size_mm=SMALL)
    for x, y in zip(arrays(a), arrays(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert same_grid(a.image, b.image, tol=0)
    assert a.lesion_centers_lps == b.lesion_centers_lps and a.has_lesion == b.has_lesion
    ai, al = arrays(a)
    ci, cl = arrays(c)
    assert ai.shape != ci.shape or not np.array_equal(ai, ci)
    assert al.shape != cl.shape or not np.array_equal(al, cl)


def test_cli_gives_identical_bytes_for_the_same_seed(tmp_path, cli):
    args = ["phantom", "--seed", "5", "--size-mm", "160,130,100", "--lesions", "yes"]
    for name in ("a", "b"):
        done = cli(*args, "--output", tmp_path / f"{name}_ct.nii.gz",
                   "--labels", tmp_path / f"{name}_labels.nii.gz")
        assert done.returncode == 0, done.stderr
        assert str(tmp_path / f"{name}_labels.nii.gz") in done.stdout
    for suffix in ("_ct.nii.gz", "_labels.nii.gz", "_labels.labels.json"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()
    # The files hold exactly what the API generates.
    ph = P.generate_phantom(5, size_mm=(160, 130, 100), lesions=True)
    ct = sitk.ReadImage(str(tmp_path / "a_ct.nii.gz"))
    labels = sitk.ReadImage(str(tmp_path / "a_labels.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(ct), arrays(ph)[0])
    assert np.array_equal(sitk.GetArrayFromImage(labels), arrays(ph)[1])
    assert same_grid(ct, ph.image) and same_grid(labels, ph.labels)
    table = load_label_table(label_table_path_for(tmp_path / "a_labels.nii.gz"))
    assert table.to_dict() == P.PHANTOM_LABELS.to_dict()


def test_cli_writes_nrrd_with_requested_geometry(tmp_path, cli):
    done = cli("phantom", "--seed", "2", "--output", tmp_path / "ct.nrrd", "--labels",
               tmp_path / "labels.nrrd", "--spacing", "1.2,1.2,2.5", "--direction", "RAI",
               "--size-mm", "160,130,100", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    ct = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    labels = sitk.ReadImage(str(tmp_path / "labels.nrrd"))
    assert same_grid(ct, labels, tol=1e-6)
    assert np.allclose(ct.GetSpacing(), (1.2, 1.2, 2.5))
    assert np.allclose(ct.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, -1))
    assert list(ct.GetSize()) == summary["size"] == [133, 108, 40]
    assert (tmp_path / "labels.labels.json").is_file()


# ------------------------------------------------------------------------------------ intensities

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intensities_respect_the_documented_hu_ranges(seed):
    ph = P.generate_phantom(seed, size_mm=(220, 180, 150), lesions=True)
    image, labels = arrays(ph)
    tissues = sitk.GetArrayFromImage(ph.tissues)
    for lab in P.PHANTOM_LABELS:
        inside = labels == lab.value
        assert inside.any(), f"{lab.name} is missing from seed {seed}"
        lo, hi = P.LABEL_HU_RANGES[lab.value]
        assert lo <= image[inside].mean() <= hi, lab.name
    for value, tissue in enumerate(P.TISSUES):
        inside = tissues == value
        if tissue.thin or np.count_nonzero(inside) < 200:
            continue  # partial volume dominates thin layers (documented)
        lo, hi = tissue.range_hu
        assert lo <= np.median(image[inside]) <= hi, tissue.name
    liver = image[labels == 1].mean()
    lesion = image[labels == P.LESION_LABEL].mean()
    assert lesion < liver - 30, "lesions must be hypodense"


def test_noise_level_and_partial_volume_blur():
    quiet = P.generate_phantom(4, spacing=2.0, direction="LPS", size_mm=SMALL, noise_hu=0)
    noisy = P.generate_phantom(4, spacing=2.0, direction="LPS", size_mm=SMALL, noise_hu=10)
    q, labels = arrays(quiet)
    n, labels_noisy = arrays(noisy)
    assert np.array_equal(labels, labels_noisy)  # noise never touches the labels
    air = sitk.GetArrayFromImage(quiet.tissues) == P.TISSUE_ID["air"]
    std = float((n.astype(np.float64) - q)[air].std())
    assert 8.8 < std < 11.0
    # Partial volume: liver voxels that touch fat are pulled toward it, while the label map
    # stays crisp (the truth is the tissue at each voxel centre).
    tissues = sitk.GetArrayFromImage(quiet.tissues)
    liver = labels == 1
    fat = np.pad(tissues == P.TISSUE_ID["visceral_fat"], 1)
    touches_fat = np.zeros_like(liver)
    for axis in range(3):
        for step in (-1, 1):
            touches_fat |= np.roll(fat, step, axis=axis)[1:-1, 1:-1, 1:-1]
    border = liver & touches_fat
    core = sitk.GetArrayFromImage(sitk.BinaryErode(quiet.labels == 1, (2, 2, 2))).astype(bool)
    assert border.sum() > 100 and core.sum() > 100
    assert q[border].mean() < q[core].mean() - 10
    assert set(np.unique(labels)) <= {0} | {lab.value for lab in P.PHANTOM_LABELS}


# ------------------------------------------------------------------------------------ geometry

@pytest.mark.parametrize("spacing, direction", [
    ((0.7, 0.7, 3.0), "RAS"),
    ((1.5, 1.5, 1.5), "PIR"),
    ((2.0, 1.8, 2.5), tuple(np.round(P._rot_axis(np.array([1.0, -2.0, 0.5]), 10.0)
                                     @ np.diag([1.0, -1.0, -1.0]), 12).reshape(-1))),
])
def test_geometry_honours_requested_spacing_and_direction(tmp_path, spacing, direction):
    ph = P.generate_phantom(8, spacing=spacing, direction=direction, size_mm=SMALL)
    expected_dir = (np.asarray(direction, dtype=float).reshape(-1) if not isinstance(direction, str)
                    else sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(direction))
    assert np.allclose(ph.image.GetSpacing(), spacing, atol=1e-12)
    assert np.allclose(ph.image.GetDirection(), expected_dir, atol=1e-12)
    assert same_grid(ph.image, ph.labels, tol=0) and same_grid(ph.image, ph.tissues, tol=0)
    d = np.asarray(ph.image.GetDirection()).reshape(3, 3)
    extent = np.asarray(SMALL)[np.argmax(np.abs(d), axis=0)]  # field of view along each image axis
    assert np.array_equal(ph.image.GetSize(), np.rint(extent / np.asarray(spacing)).astype(int))
    # The grid is still exact after a round trip through NIfTI.
    P.write_phantom(ph, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert same_grid(back, ph.labels, tol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(back), arrays(ph)[1])


def test_shape_option_sets_the_voxel_grid():
    ph = P.generate_phantom(3, shape=(64, 60, 48), spacing=2.0, direction="LPS")
    assert ph.image.GetSize() == (64, 60, 48) and ph.image.GetSpacing() == (2.0, 2.0, 2.0)
    assert {"liver", "aorta", "vertebrae"} <= set(label_stats(ph))


def test_anatomy_is_the_same_physical_anatomy_on_every_grid():
    """Organ volumes and LPS centroids agree across spacings, flips, permutations and tilts, and
    the organs sit on the correct side of the patient (LPS: +x left, +y posterior, +z head)."""
    ref = label_stats(P.generate_phantom(6, spacing=1.0, direction="LPS", size_mm=SMALL, lesions=True))
    assert ref["liver"][1][0] < ref["spleen"][1][0]                 # liver on the patient's right
    assert ref["kidney_right"][1][0] < ref["kidney_left"][1][0]
    assert ref["vertebrae"][1][1] > ref["aorta"][1][1]              # spine behind the aorta
    assert ref["lung"][1][2] > ref["kidney_left"][1][2]             # lung bases above the kidneys
    tilt = P._rot_axis(np.array([0.3, 1.0, -0.4]), 9.0) @ np.diag([-1.0, 1.0, -1.0])
    for spacing, direction in [(2.0, "LPS"), ((0.8, 0.8, 3.0), "RAI"), (1.5, "PIR"), (1.5, tilt)]:
        other = label_stats(P.generate_phantom(6, spacing=spacing, direction=direction,
                                               size_mm=SMALL, lesions=True))
        for name in (*ORGANS, "liver_lesion"):
            volume, centroid = other[name]
            tolerance = 0.03 if name != "liver_lesion" else 0.08
            assert abs(volume / ref[name][0] - 1) < tolerance, (name, spacing, direction)
            assert np.linalg.norm(centroid - ref[name][1]) < 1.0, (name, spacing, direction)


# ------------------------------------------------------------------------------------ labels

def test_label_table_values_names_and_codes():
    by_name = {lab.name: lab for lab in P.PHANTOM_LABELS}
    assert [(lab.value, lab.name) for lab in P.PHANTOM_LABELS] == [
        (1, "liver"), (2, "spleen"), (3, "kidney_left"), (4, "kidney_right"), (5, "aorta"),
        (6, "vertebrae"), (7, "lung"), (8, "liver_lesion")]
    types = {name: lab.terminology.type[1] for name, lab in by_name.items()}
    assert types == {"liver": "10200004", "spleen": "78961009", "kidney_left": "64033007",
                     "kidney_right": "64033007", "aorta": "15825003", "vertebrae": "51282000",
                     "lung": "39607008", "liver_lesion": "52988006"}
    assert by_name["kidney_left"].terminology.modifier[1] == "7771000"
    assert by_name["kidney_right"].terminology.modifier[1] == "24028007"
    for name, lab in by_name.items():
        category = "49755003" if name == "liver_lesion" else "123037004"
        assert lab.terminology.category[:2] == ("SCT", category)
    assert {t.label for t in P.TISSUES} == {0} | {lab.value for lab in P.PHANTOM_LABELS}


def test_lesion_flag_matches_the_label_map_and_lesions_change_nothing_else():
    flags = []
    for seed in range(6):
        ph = P.generate_phantom(seed, spacing=2.0, size_mm=SMALL)
        labels = sitk.GetArrayFromImage(ph.labels)
        assert ph.has_lesion == bool((labels == P.LESION_LABEL).any())
        assert ph.has_lesion == bool(ph.lesion_centers_lps)
        for centre in ph.lesion_centers_lps:
            index = ph.labels.TransformPhysicalPointToIndex(centre)
            assert labels[index[::-1]] == P.LESION_LABEL
        flags.append(ph.has_lesion)
    assert True in flags and False in flags  # "random" really decides per seed
    with_lesion = arrays(P.generate_phantom(1, spacing=2.0, size_mm=SMALL, lesions=True))[1]
    without = P.generate_phantom(1, spacing=2.0, size_mm=SMALL, lesions=False)
    assert not without.has_lesion and without.lesion_centers_lps == []
    assert np.array_equal(arrays(without)[1], np.where(with_lesion == P.LESION_LABEL, 1, with_lesion))


def test_default_size_and_speed():
    start = time.perf_counter()
    ph = P.generate_phantom(0, spacing=1.5, direction="LPS")
    elapsed = time.perf_counter() - start
    assert ph.image.GetSize() == (200, 167, 133)
    assert elapsed < 5.0, f"default phantom took {elapsed:.1f} s (expected well under 2 s)"


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("extra, code", [
    (["--spacing", "0"], 2),
    (["--spacing", "1,x,2"], 2),
    (["--spacing", "0.1"], 2),                      # far too many voxels
    (["--size-mm", "10"], 2),
    (["--direction", "LPX"], 2),
    (["--direction=1,0,0,0,1,0,0,0,2"], 2),         # not orthonormal
    (["--shape", "64,64,64", "--spacing", "1", "--size-mm", "100"], 2),
    (["--noise-hu", "-5"], 2),
    (["--seed", "-3"], 2),
    (["--seed", "abc"], 2),
])
def test_bad_options_give_one_sentence_and_write_nothing(tmp_path, capsys, extra, code):
    args = ["phantom", "--seed", "1", "--output", str(tmp_path / "ct.nii.gz"),
            "--labels", str(tmp_path / "labels.nii.gz"), *extra]
    assert cli.main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coralbay: error: ") and err[0].endswith(".")
    assert list(tmp_path.iterdir()) == []


# docs/cli.md's one exit-code rule: an output named wrongly (an extension the format cannot write, a
# missing parent folder, one file for both outputs) is a wrong command line, exit 2, in every command.
@pytest.mark.parametrize("ct, labels, code", [
    ("ct.txt", "labels.nii.gz", 2),
    ("missing/ct.nii.gz", "labels.nii.gz", 2),
    ("same.nii.gz", "same.nii.gz", 2),
])
def test_bad_output_paths_are_refused_before_writing(tmp_path, capsys, ct, labels, code):
    args = ["phantom", "--seed", "1", "--output", str(tmp_path / ct), "--labels", str(tmp_path / labels)]
    assert cli.main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coralbay: error: ")
    assert list(tmp_path.iterdir()) == []


def test_bad_option_through_the_real_command(tmp_path, cli):
    done = cli("phantom", "--seed", "1", "--output", tmp_path / "ct.nii.gz", "--labels",
               tmp_path / "labels.nii.gz", "--spacing", "-1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["coralbay: error: The spacing must lie between "
                                                "0.1 and 20 (got -1, -1, -1)."]
    assert list(tmp_path.iterdir()) == []


def test_unknown_lesion_choice_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["phantom", "--seed", "1", "--output", str(tmp_path / "ct.nii.gz"),
                  "--labels", str(tmp_path / "labels.nii.gz"), "--lesions", "maybe"])
    assert stop.value.code == 2 and "--lesions" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["phantom", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--seed", "--output", "--labels", "--spacing", "--lesions", "--size-mm",
                   "--direction", "--shape", "--noise-hu"):
        assert option in text
    assert list(tmp_path.iterdir()) == []


def test_phantom_page_documents_the_hu_table():
    section = (REPO / "docs" / "phantom.md").read_text(encoding="utf-8")
    for row in P.hu_table_rows():
        assert row in section, row
    assert "coralbay phantom" in section

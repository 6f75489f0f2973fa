"""Irregular DICOM series (issue 7, item 2): each is read as a correct regular volume or refused.

The synthetic series are real DICOM files (pydicom, 16x16 pixels) whose voxel values are a linear
function of their physical position, f(p) = 3x + 2y + 7z + 100 (LPS mm). A correct volume has
f(physical point of the voxel) in every voxel, whatever its grid; a slice stacked in the wrong
place, a wrong spacing, a wrong origin or direction, or a sheared stack read as straight would
break that by several units. Linear interpolation (used to regularise irregular stacks)
reproduces a linear function exactly, so the same check holds for resampled volumes.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.errors import InputError, UsageError
from coralbay.io.volumes import GEOMETRY_NOTE_KEY, read_volume, volume_info
from fuzz_support import dicom_bytes, dicom_slice

GRADIENT = np.array([3.0, 2.0, 7.0])
PIXEL_SPACING = (0.8, 0.7)  # DICOM order: between rows (y), between columns (x)
SIZE = 16


def f(points: np.ndarray) -> np.ndarray:
    return points @ GRADIENT + 100.0


def slice_values(position, row, col) -> np.ndarray:
    """(rows, columns) values of f at the pixel centres of a slice."""
    j, i = np.mgrid[0:SIZE, 0:SIZE]
    points = (np.asarray(position, float)[None, None, :] + i[..., None] * PIXEL_SPACING[1] * np.asarray(row)
              + j[..., None] * PIXEL_SPACING[0] * np.asarray(col))
    return np.rint(f(points)).astype(np.int16)


def write_series(folder: Path, positions, orientation=(1, 0, 0, 0, 1, 0), shuffle_names: bool = True,
                 series_uid: str = "1.2.826.0.1.3680043.8.498.10", series_number: int = 1,
                 description: str = "CT test", seed: int = 0, pixel_spacing=PIXEL_SPACING,
                 orientations=None) -> list[Path]:
    """Write one slice per position; file names are shuffled so that name order means nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IM{n:04d}.dcm" for n in range(len(positions))]
    if shuffle_names:
        random.Random(seed).shuffle(names)
    paths = []
    for k, (position, name) in enumerate(zip(positions, names)):
        o = orientations[k] if orientations is not None else orientation
        values = slice_values(position, o[:3], o[3:])
        ds = dicom_slice(values, position, orientation=o, pixel_spacing=pixel_spacing,
                         series_uid=series_uid, instance=k + 1, series_number=series_number,
                         description=description, intercept=0.0)
        (folder / name).write_bytes(dicom_bytes(ds))
        paths.append(folder / name)
    return paths


def physical_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) physical positions of all voxels."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float) * np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + index @ direction.T


def assert_values_follow_position(image: sitk.Image, tolerance: float, fill=None) -> int:
    """Every voxel (but fill) holds f of its physical position; returns the number checked."""
    values = sitk.GetArrayFromImage(image).astype(float)
    expected = f(physical_points(image))
    mask = np.ones(values.shape, bool) if fill is None else values != fill
    error = np.abs(values - expected)[mask]
    assert mask.sum() > 0.5 * values.size, "most voxels should hold acquired data"
    assert error.max() <= tolerance, f"largest deviation {error.max():.2f} at {np.argmax(error)}"
    return int(mask.sum())


def axial_positions(steps, start=(-5.0, 12.0, -40.0)):
    z = np.concatenate([[0.0], np.cumsum(steps)])
    return [(start[0], start[1], start[2] + dz) for dz in z]


# ---- regular series: read exactly ------------------------------------------------------------

def test_shuffled_file_names_are_stacked_by_position(tmp_path):
    positions = axial_positions([2.0] * 5)
    write_series(tmp_path, positions[::-1])  # instance numbers and names run against z
    image = read_volume(tmp_path)
    assert image.GetSize() == (SIZE, SIZE, 6)
    assert np.allclose(image.GetSpacing(), (0.7, 0.8, 2.0))
    assert np.allclose(image.GetOrigin(), positions[0])
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    assert_values_follow_position(image, tolerance=0.5)
    assert not image.HasMetaDataKey(GEOMETRY_NOTE_KEY)


def test_oblique_series_keeps_its_orientation(tmp_path):
    a = math.radians(25)
    row, col = (math.cos(a), math.sin(a), 0.0), (0.0, 0.0, -1.0)  # a tilted coronal-like plane
    normal = np.cross(row, col)
    positions = [tuple(np.array([3.0, -7.0, 11.0]) + 1.5 * k * normal) for k in range(5)]
    write_series(tmp_path, positions, orientation=row + col)
    image = read_volume(tmp_path)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction[:, 0], row, atol=1e-5) and np.allclose(direction[:, 1], col, atol=1e-5)
    assert np.allclose(direction[:, 2], normal, atol=1e-5)
    assert np.isclose(image.GetSpacing()[2], 1.5, atol=1e-4)
    assert_values_follow_position(image, tolerance=0.51)


def test_real_ct_with_descending_files_matches_its_tags(shared_data):
    """dcmqi ct-3slice: files 01..03 run towards the feet; the volume starts at the lowest slice."""
    import pydicom

    folder = shared_data / "dcmqi" / "ct-3slice"
    image = read_volume(folder)
    lowest = pydicom.dcmread(folder / "03.dcm")
    assert np.allclose(image.GetOrigin(), [float(v) for v in lowest.ImagePositionPatient], atol=1e-4)
    assert np.isclose(image.GetSpacing()[2], 1.0, atol=1e-4)
    hu = lowest.pixel_array * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    assert np.array_equal(sitk.GetArrayViewFromImage(image)[0], hu)


def test_real_jpeg2000_series_reads_as_itk_does(shared_data):
    """totalseg example_ct_dicom (JPEG 2000 lossless): same voxels and grid as ITK's own reader."""
    folder = shared_data / "totalseg" / "example_ct_dicom"
    ours = read_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    plain = reader.Execute()
    assert ours.GetSize() == plain.GetSize() == (512, 512, 20)
    assert np.allclose(ours.GetSpacing(), plain.GetSpacing(), atol=1e-5)
    assert np.allclose(ours.GetOrigin(), plain.GetOrigin(), atol=1e-4)
    assert np.allclose(ours.GetDirection(), plain.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(plain))


def enhanced_ct(positions, values: np.ndarray):
    """A multi-frame Enhanced CT Image with per-frame positions (shared orientation and spacing)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def item(**fields):
        ds = Dataset()
        for key, value in fields.items():
            setattr(ds, key, value)
        return ds

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = item(SOPClassUID=meta.MediaStorageSOPClassUID, SOPInstanceUID=meta.MediaStorageSOPInstanceUID,
              Modality="CT", SeriesInstanceUID=generate_uid(), StudyInstanceUID=generate_uid(),
              FrameOfReferenceUID=generate_uid(), Rows=SIZE, Columns=SIZE, NumberOfFrames=len(positions),
              SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16,
              BitsStored=16, HighBit=15, PixelRepresentation=1)
    ds.file_meta = meta
    ds.SharedFunctionalGroupsSequence = Sequence([item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[str(v) for v in PIXEL_SPACING], SliceThickness="1")]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]),
        PixelValueTransformationSequence=Sequence([item(RescaleIntercept="0", RescaleSlope="1", RescaleType="HU")]))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[f"{v:g}" for v in p])]))
        for p in positions])
    ds.add_new(0x7FE00010, "OW", values.astype(np.int16).tobytes())
    return ds


@pytest.mark.parametrize("descending", [False, True], ids=["ascending-frames", "descending-frames"])
def test_multiframe_enhanced_ct(tmp_path, descending):
    positions = axial_positions([1.25] * 4)
    if descending:
        positions = positions[::-1]
    values = np.stack([slice_values(p, (1, 0, 0), (0, 1, 0)) for p in positions])
    enhanced_ct(positions, values).save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    image = read_volume(tmp_path)
    assert image.GetSize() == (SIZE, SIZE, 5)
    assert np.allclose(image.GetOrigin(), min(positions, key=lambda p: p[2]))
    assert np.isclose(image.GetSpacing()[2], 1.25)
    assert_values_follow_position(image, tolerance=0.5)


def test_other_objects_in_the_folder_are_left_out(shared_data, tmp_path):
    """A SEG object and a text file beside a CT series do not disturb reading it."""
    for source in sorted((shared_data / "dcmqi" / "ct-3slice").iterdir()):
        shutil.copy(source, tmp_path / source.name)
    shutil.copy(shared_data / "dcmqi" / "liver.dcm", tmp_path / "liver-seg.dcm")
    (tmp_path / "README.txt").write_text("notes about this scan\n")
    image = read_volume(tmp_path)
    plain = read_volume(shared_data / "dcmqi" / "ct-3slice")
    assert image.GetSize() == plain.GetSize() and np.allclose(image.GetOrigin(), plain.GetOrigin())


def test_folder_with_only_a_seg_object_says_what_it_found(shared_data, tmp_path):
    shutil.copy(shared_data / "dcmqi" / "liver.dcm", tmp_path / "liver.dcm")
    with pytest.raises(InputError, match=r"no DICOM image series \(liver.dcm \(SEG object\)\)"):
        read_volume(tmp_path)


# ---- irregular series: resampled through physical space --------------------------------------

def test_uneven_spacing_is_resampled_through_physical_space(tmp_path, caplog):
    positions = axial_positions([2.0, 2.0, 3.0, 2.5, 2.0, 2.0])
    write_series(tmp_path, positions)
    with caplog.at_level(logging.WARNING, logger="coralbay.io"):
        image = read_volume(tmp_path)
    extent = positions[-1][2] - positions[0][2]
    assert np.isclose((image.GetSize()[2] - 1) * image.GetSpacing()[2], extent)
    assert np.isclose(image.GetSpacing()[2], extent / round(extent / 2.0))  # median step, ends on slices
    assert np.allclose(image.GetOrigin(), positions[0])
    assert_values_follow_position(image, tolerance=1.01)
    note = image.GetMetaData(GEOMETRY_NOTE_KEY)
    assert "unevenly spaced slices (2 to 3 mm apart)" in note and "resampled" in note
    assert note in caplog.text
    assert volume_info(image)["note"] == note


def test_cli_info_reports_the_resampling(tmp_path, cli):
    write_series(tmp_path, axial_positions([2.0, 2.0, 4.0, 2.0]))
    result = cli("info", tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "note: The DICOM series" in result.stdout and "resampled onto a regular 2 mm grid" in result.stdout
    assert "size         16 x 16 x 6 voxels" in result.stdout


def test_one_missing_slice_is_interpolated(tmp_path):
    positions = axial_positions([2.0] * 8)
    write_series(tmp_path, positions[:4] + positions[5:])
    image = read_volume(tmp_path)
    assert image.GetSize() == (SIZE, SIZE, 9)
    assert np.isclose(image.GetSpacing()[2], 2.0)
    assert np.allclose(image.GetOrigin(), positions[0])
    assert_values_follow_position(image, tolerance=1.01)


def test_several_missing_slices_are_refused(tmp_path):
    positions = axial_positions([2.0] * 8)
    write_series(tmp_path, positions[:3] + positions[6:])
    with pytest.raises(InputError, match=r"gap of 8 mm between slices .* usual step is 2 mm \(missing slices\)"):
        read_volume(tmp_path)


@pytest.mark.parametrize("tilt_degrees", [12.0, -20.0])
def test_gantry_tilt_is_resampled_onto_the_tilted_grid(tmp_path, tilt_degrees):
    """Tilted gantry: slice planes tilted about x, table (positions) moving along z."""
    a = math.radians(tilt_degrees)
    row, col = (1.0, 0.0, 0.0), (0.0, math.cos(a), math.sin(a))
    positions = [(-5.0, 12.0, -40.0 + 2.5 * k) for k in range(6)]
    write_series(tmp_path, positions, orientation=row + col)
    image = read_volume(tmp_path)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction, np.stack([row, col, np.cross(row, col)], axis=1), atol=1e-6)
    assert np.isclose(image.GetSpacing()[2], 2.5 * math.cos(a), atol=1e-4)
    shift_pixels = 5 * 2.5 * abs(math.sin(a)) / PIXEL_SPACING[0]
    assert image.GetSize()[1] == SIZE + round(shift_pixels)  # widened to hold every slice
    fill = float(sitk.GetArrayViewFromImage(image).min())
    assert_values_follow_position(image, tolerance=1.01, fill=fill)
    assert f"tilted by {abs(tilt_degrees):.1f} degrees" in image.GetMetaData(GEOMETRY_NOTE_KEY)


def test_sideways_sheared_stack_is_resampled(tmp_path):
    positions = [(-5.0 + 0.35 * k, 12.0, -40.0 + 2.0 * k) for k in range(6)]
    write_series(tmp_path, positions)
    image = read_volume(tmp_path)
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    assert image.GetSize()[0] == SIZE + round(5 * 0.35 / PIXEL_SPACING[1])
    fill = float(sitk.GetArrayViewFromImage(image).min())
    assert_values_follow_position(image, tolerance=1.01, fill=fill)


# ---- series that cannot form one volume: refused, saying why ----------------------------------

def test_two_series_in_one_folder_are_listed(tmp_path):
    write_series(tmp_path, axial_positions([2.0] * 3), series_uid="1.2.3.4.1", series_number=3,
                 description="Abdomen 2mm")
    other = write_series(tmp_path / "tmp", axial_positions([5.0] * 1), series_uid="1.2.3.4.2",
                         series_number=4, description="Scout")
    for path in other:
        path.rename(tmp_path / f"scout-{path.name}")
    shutil.rmtree(tmp_path / "tmp")
    with pytest.raises(UsageError) as error:  # both are regular CT volumes: the user chooses (exit 2)
        read_volume(tmp_path)
    message = str(error.value)
    assert "holds 2 DICOM image series, 2 of them regular CT volumes; choose one with --series" in message
    assert 'series 3 "Abdomen 2mm" (CT, 16 x 16 x 4: regular' in message
    assert 'series 4 "Scout" (CT, 16 x 16 x 2: regular' in message
    assert read_volume(tmp_path, series="4").GetSize()[2] == 2
    assert read_volume(tmp_path, series="1.2.3.4.1").GetSize()[2] == 4


def test_duplicate_positions_are_refused_naming_the_files(tmp_path):
    positions = axial_positions([2.0] * 4)
    write_series(tmp_path, positions + [positions[2]], shuffle_names=False)
    with pytest.raises(InputError, match=r"two slices at the same position \(IM000[25]\.dcm and IM000[25]\.dcm"):
        read_volume(tmp_path)


def test_slices_with_different_orientations_are_refused(tmp_path):
    positions = axial_positions([2.0] * 4)
    orientations = [(1, 0, 0, 0, 1, 0)] * 4 + [(1, 0, 0, 0, 0.9950042, 0.0998334)]
    write_series(tmp_path, positions, orientations=orientations)
    with pytest.raises(InputError, match="different orientations"):
        read_volume(tmp_path)


def test_slices_with_different_pixel_spacing_are_refused(tmp_path):
    positions = axial_positions([2.0] * 4)
    write_series(tmp_path, positions[:2], seed=1)
    write_series(tmp_path / "b", positions[2:], pixel_spacing=(0.9, 0.9), seed=2)
    for path in (tmp_path / "b").iterdir():
        path.rename(tmp_path / f"b-{path.name}")
    with pytest.raises(InputError, match="different pixel spacings"):
        read_volume(tmp_path)


def test_a_slice_without_position_is_refused_by_name(tmp_path):
    import pydicom

    paths = write_series(tmp_path, axial_positions([2.0] * 3), shuffle_names=False)
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(InputError, match=r"IM0001.dcm lacks ImagePositionPatient"):
        read_volume(tmp_path)


def test_a_single_slice_is_refused(tmp_path):
    write_series(tmp_path, axial_positions([]))
    with pytest.raises(InputError, match="single slice"):
        read_volume(tmp_path)


def test_dicom_series_files_follow_the_volume_and_refuse_resampled_series(tmp_path):
    """DICOM SEG pairs volume slices with files: the order must be the volume's, and a resampled
    series (no one-to-one pairing) must be refused rather than paired wrongly."""
    import pydicom

    from coralbay.io.volumes import dicom_series_files

    positions = axial_positions([2.0] * 4)
    write_series(tmp_path / "regular", positions)
    files = dicom_series_files(tmp_path / "regular")
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z) and len(z) == 5
    write_series(tmp_path / "gap", positions[:2] + positions[3:])
    with pytest.raises(InputError, match="cannot be paired with its files one by one"):
        dicom_series_files(tmp_path / "gap")

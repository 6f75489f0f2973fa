"""DICOM studies as they arrive on a CD or USB stick (issue 26), and detached headers kept in their folder.

Studies are real files: the real series of ../shared/data written with a DICOMDIR by pydicom's
FileSet, and generated series (fuzz_support.dicom_slice, 16x16 pixels) whose voxel values follow
their physical position, in nested folders, with a localizer, an RGB image, a single slice and a
tilted stack, and DICOMDIRs whose paths use backslashes and upper case or name a missing file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from coralbay.errors import InputError, UsageError
from coralbay.io.dicom_study import check_study, select_series
from coralbay.io.volumes import read_volume, series_read
from fuzz_support import dicom_bytes, dicom_slice

CT_UID, TILTED_UID, SCOUT_UID = "1.2.826.0.1.3680043.8.498.201", "1.2.826.0.1.3680043.8.498.202", "1.2.826.0.1.3680043.8.498.203"


def write_series(folder: Path, uid: str, number: int, description: str, count: int = 6, tilt_mm: float = 0.0,
                 extra: dict | None = None, names: str = "IM{k:04d}") -> list[Path]:
    """`count` axial 16x16 slices 2 mm apart (shifted sideways by `tilt_mm` per slice: gantry tilt);
    pixel values 3x + 2y + 7z + 100 of each pixel's position (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        position = (-5.0 + tilt_mm * k, 12.0, -40.0 + 2.0 * k)
        j, i = np.mgrid[0:16, 0:16]
        values = np.rint(3 * (position[0] + 0.7 * i) + 2 * (position[1] + 0.8 * j) + 7 * position[2] + 100)
        ds = dicom_slice(values.astype(np.int16), position, series_uid=uid, instance=k + 1, series_number=number,
                         description=description, intercept=0.0, extra=extra)
        path = folder / names.format(k=k)
        path.write_bytes(dicom_bytes(ds))
        paths.append(path)
    return paths


def write_rgb(folder: Path) -> Path:
    """A secondary-capture-like RGB image (a screenshot in the study)."""
    ds = dicom_slice(np.zeros((16, 16), np.int16), (0, 0, 0), series_uid="1.2.826.0.1.3680043.8.498.204",
                     series_number=90, description="Dose report")
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.add_new(0x7FE00010, "OB", bytes(16 * 16 * 3))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RGB0001").write_bytes(dicom_bytes(ds))
    return folder / "RGB0001"


@pytest.fixture
def nested_study(tmp_path) -> Path:
    """No DICOMDIR: series at several depths, one regular CT among a localizer, a tilted stack, a
    single slice, an RGB image and a file that is not DICOM."""
    root = tmp_path / "study"
    write_series(root / "PATIENT" / "CT" / "SE3", CT_UID, 3, "Abdomen 2mm")
    write_series(root / "PATIENT" / "CT" / "SE4", TILTED_UID, 4, "Tilted", tilt_mm=0.7)
    write_series(root / "PATIENT" / "SE1", SCOUT_UID, 1, "Topogram", count=2,
                 extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    write_series(root / "SE7", "1.2.826.0.1.3680043.8.498.205", 7, "Key image", count=1)
    write_rgb(root / "SE90")
    (root / "README.TXT").write_text("Viewer for Windows\n")
    return root


def test_nested_study_lists_each_series_and_why_it_is_not_a_regular_ct(nested_study):
    study, checks = check_study(nested_study)
    assert study.dicomdir is None and study.nested and not study.plain_series_folder
    verdicts = {c.series.number: c.problem for c in checks}
    assert [c.series.number for c in checks] == ["1", "3", "4", "7", "90"]  # series-number order
    assert verdicts["3"] == ""
    assert verdicts["1"] == "localizer"
    assert "tilted by" in verdicts["4"]
    assert verdicts["7"] == "single slice"
    assert verdicts["90"].startswith("RGB")
    assert study.skipped == ("README.TXT (not DICOM)",)
    regular = next(c for c in checks if c.series.number == "3")
    assert regular.size == (16, 16, 6) and regular.spacing_mm == pytest.approx((0.7, 0.8, 2.0))


def test_the_only_regular_ct_is_read_and_named(nested_study, caplog):
    with caplog.at_level(logging.WARNING, logger="coralbay.io"):
        image = read_volume(nested_study)
    assert series_read(image) == {"series": "3", "series_uid": CT_UID}
    assert image.GetSize() == (16, 16, 6) and image.GetSpacing() == pytest.approx((0.7, 0.8, 2.0))
    assert 'series 3 "Abdomen 2mm"' in caplog.text and "the only regular CT volume of its 5 series" in caplog.text
    direct = read_volume(nested_study / "PATIENT" / "CT" / "SE3")  # the plain series folder, as before
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(direct))
    assert image.GetOrigin() == direct.GetOrigin()


def test_series_option_chooses_by_number_or_uid_and_refuses_unknown(nested_study):
    tilted = read_volume(nested_study, series="4")  # asked for: read, resampled like any tilted stack
    assert series_read(tilted)["series_uid"] == TILTED_UID and tilted.GetSize()[0] > 16
    assert series_read(read_volume(nested_study, series=CT_UID))["series"] == "3"
    with pytest.raises(UsageError) as error:
        read_volume(nested_study, series="12")
    message = str(error.value)
    assert "holds no series 12; choose one with --series" in message
    assert 'series 1 "Topogram" (CT, 16 x 16 x 2: localizer)' in message and "\n" not in message
    with pytest.raises(InputError, match="single slice"):
        read_volume(nested_study, series="7")
    with pytest.raises(UsageError, match="is a file"):
        read_volume(nested_study / "SE90" / "RGB0001", series="3")


def test_segment_reads_the_series_named_on_the_command_line(nested_study, cli, tiny_seg_bundle, tmp_path):
    write_series(nested_study / "PATIENT" / "CT" / "SE5", "1.2.826.0.1.3680043.8.498.206", 5, "Abdomen 5mm", count=4)
    out = tmp_path / "labels.nii.gz"
    done = cli("segment", nested_study, "-m", tiny_seg_bundle, "-o", out, "--series", "5", "--progress", "jsonl")
    assert done.returncode == 0, done.stderr
    assert sitk.ReadImage(str(out)).GetSize() == (16, 16, 4)  # the grid of series 5, not of series 3
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and result["series"] == "5"
    assert result["series_uid"] == "1.2.826.0.1.3680043.8.498.206"


def test_info_lists_the_study(nested_study, cli):
    done = cli("info", nested_study, "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["default_series"] == CT_UID and not listing["dicomdir"]
    by_number = {s["number"]: s for s in listing["series"]}
    assert by_number["3"]["regular_ct"] and by_number["3"]["folders"] == ["PATIENT/CT/SE3"]
    assert by_number["3"]["size"] == [16, 16, 6] and by_number["3"]["spacing_mm"] == [0.7, 0.8, 2.0]
    assert by_number["1"]["problem"] == "localizer" and by_number["90"]["problem"].startswith("RGB")
    text = cli("info", nested_study).stdout
    assert "5 image series (from its files)" in text and "<- read when no --series is given" in text
    one = cli("info", nested_study, "--series", "3")
    assert one.returncode == 0 and "16 x 16 x 6 voxels" in one.stdout and CT_UID in one.stdout


# ---- DICOMDIR ---------------------------------------------------------------------------------

def write_fileset(items: list[Path], folder: Path) -> Path:
    """Write `items` with a DICOMDIR into `folder` with pydicom's FileSet, filling the identifiers
    an anonymiser blanked that a DICOMDIR record needs (as a CD writer does)."""
    from pydicom.fileset import FileSet
    from pydicom.uid import generate_uid

    fileset = FileSet()
    for path in items:
        ds = pydicom.dcmread(path)
        folder_key = str(path.parent)
        needed = {"PatientID": "ANON", "StudyInstanceUID": generate_uid(entropy_srcs=[folder_key, "study"]),
                  "StudyDate": "20240101", "StudyTime": "120000", "StudyID": "1",
                  "SeriesInstanceUID": generate_uid(entropy_srcs=[folder_key]), "SeriesNumber": "5",
                  "SOPInstanceUID": ds.file_meta.MediaStorageSOPInstanceUID}
        for keyword, value in needed.items():
            if not ds.get(keyword):
                setattr(ds, keyword, value)
        fileset.add(ds)
    fileset.write(folder)
    return folder


@pytest.fixture(scope="module")
def real_study(tmp_path_factory, shared_data) -> Path:
    """The two real series (Siemens JPEG 2000, 20 slices; GE 3 slices) on one 'CD' with a DICOMDIR."""
    files = sorted((shared_data / "totalseg" / "example_ct_dicom").iterdir()) + \
        sorted((shared_data / "dcmqi" / "ct-3slice").iterdir())
    return write_fileset(files, tmp_path_factory.mktemp("cd") / "CD")


def test_real_study_with_dicomdir_reads_each_series_as_its_own_folder_does(real_study, shared_data):
    study, checks = check_study(real_study)
    assert study.dicomdir == real_study / "DICOMDIR" and study.skipped == ()
    assert [(c.series.number, c.size, c.regular_ct) for c in checks] == [("2", (512, 512, 3), True),
                                                                         ("5", (512, 512, 20), True)]
    with pytest.raises(UsageError, match="2 of them regular CT volumes"):
        read_volume(real_study)
    for number, original in (("2", "dcmqi/ct-3slice"), ("5", "totalseg/example_ct_dicom")):
        image, direct = read_volume(real_study, series=number), read_volume(shared_data / original)
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(direct))
        assert image.GetOrigin() == direct.GetOrigin() and image.GetDirection() == direct.GetDirection()
        assert image.GetSpacing() == pytest.approx(direct.GetSpacing())


def test_dicom_seg_export_references_the_chosen_series_of_a_study(real_study, shared_data, cli, tmp_path):
    out = tmp_path / "liver.dcm"
    done = cli("export", shared_data / "dcmqi" / "liver_spine_seg.nrrd", "--format", "dicom-seg", "--output", out,
               "--dicom-series", real_study, "--progress", "none")
    assert done.returncode == 2 and "choose one with --series" in done.stderr and not out.exists()
    done = cli("export", shared_data / "dcmqi" / "liver_spine_seg.nrrd", "--format", "dicom-seg", "--output", out,
               "--dicom-series", real_study, "--series", "2", "--progress", "none")
    assert done.returncode == 0, done.stderr
    source = pydicom.dcmread(next((shared_data / "dcmqi" / "ct-3slice").iterdir()), stop_before_pixels=True)
    assert pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    done = cli("export", shared_data / "dcmqi" / "liver_spine_seg.nrrd", "--format", "nifti", "--output",
               tmp_path / "x.nii.gz", "--series", "2")
    assert done.returncode == 2 and "--dicom-series" in done.stderr


def test_compare_shows_the_chosen_series_of_a_study(real_study, shared_data, tmp_path):
    from coralbay.review import compare_label_maps

    labels = shared_data / "dcmqi" / "liver_spine_seg.nrrd"
    with pytest.raises(UsageError, match="choose one with --series"):
        compare_label_maps(labels, labels, tmp_path / "a", image_path=real_study)
    metrics = compare_label_maps(labels, labels, tmp_path / "b", image_path=real_study, series="2")
    assert [s["dice"] for s in metrics["structures"]] == [1.0, 1.0]
    assert (tmp_path / "b" / "overview.png").is_file() and not (tmp_path / "a").exists()


def generated_cd(tmp_path: Path) -> Path:
    """A generated study with a DICOMDIR: the regular CT (6 files) and a localizer."""
    source = tmp_path / "source"
    files = write_series(source / "ct", CT_UID, 3, "Abdomen 2mm")
    files += write_series(source / "scout", SCOUT_UID, 1, "Topogram", count=2,
                          extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    cd = write_fileset(files, tmp_path / "cd")
    shutil.rmtree(source)
    (cd / "STRAY.DCM").write_bytes((cd / "DICOMDIR").read_bytes()[:10])  # not named: never read
    return cd


def lower_case_tree(root: Path) -> None:
    """Rename every file and folder below `root` to lower case (as some systems mount CDs)."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))


def test_dicomdir_paths_with_backslashes_and_upper_case_resolve_on_a_case_sensitive_disk(tmp_path):
    cd = generated_cd(tmp_path)
    record_ids = [r.ReferencedFileID for r in pydicom.dcmread(cd / "DICOMDIR").DirectoryRecordSequence
                  if "ReferencedFileID" in r]
    raw = (cd / "DICOMDIR").read_bytes()
    assert b"\\" in raw and all(str(part).isupper() for ids in record_ids for part in ids)  # IDs as on disc
    lower_case_tree(cd)
    assert not any(p.name.isupper() and p.name != "DICOMDIR" for p in cd.rglob("*"))
    image = read_volume(cd)  # the localizer is left aside: the only regular CT volume is read
    assert series_read(image)["series_uid"] == CT_UID and image.GetSize() == (16, 16, 6)


def test_a_file_the_dicomdir_names_but_is_missing_gets_one_sentence(tmp_path, cli):
    cd = generated_cd(tmp_path)
    _, checks = check_study(cd)
    ct = next(c for c in checks if c.series.uid == CT_UID)
    victim = Path(ct.series.files[2])
    victim.unlink()
    study, checks = check_study(cd)
    ct = next(c for c in checks if c.series.uid == CT_UID)
    assert ct.problem == "1 file(s) named in the DICOMDIR missing" and not ct.regular_ct
    assert ct.series.missing == (victim.relative_to(cd).as_posix(),)
    done = cli("info", cd, "--series", "3")
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "The DICOMDIR names 1 file of series 3" in line
    assert victim.relative_to(cd).as_posix() in line and "the series is incomplete" in line
    with pytest.raises(UsageError, match="none of them a regular CT volume"):  # the other one is the localizer
        read_volume(cd)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the hostile value itself
def test_a_dicomdir_naming_a_file_outside_the_study_is_refused(tmp_path):
    cd = generated_cd(tmp_path)
    secret = tmp_path / "secret.dcm"
    shutil.copy(next(p for p in cd.rglob("*") if p.is_file() and p.name != "DICOMDIR" and p.name != "STRAY.DCM"),
                secret)
    ds = pydicom.dcmread(cd / "DICOMDIR")
    record = next(r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r)
    record.ReferencedFileID = ["..", "secret.dcm"]
    ds.save_as(cd / "DICOMDIR")
    with pytest.raises(InputError, match=r"names the file \.\.\\secret\.dcm, which would lie outside the study"):
        read_volume(cd)
    # a link inside the study that leads out of it: also refused
    record.ReferencedFileID = ["LINK"]
    ds.save_as(cd / "DICOMDIR")
    os.symlink(secret, cd / "LINK")
    with pytest.raises(InputError, match="a link to a file outside the study folder"):
        check_study(cd)


def test_cyclic_or_damaged_dicomdir_records_end_in_a_result_or_one_sentence(tmp_path):
    cd = generated_cd(tmp_path)
    ds = pydicom.dcmread(cd / "DICOMDIR")
    for record in ds.DirectoryRecordSequence:  # every record points back to itself (same lengths: offsets stay valid)
        record.OffsetOfTheNextDirectoryRecord = record.seq_item_tell
    ds.save_as(cd / "DICOMDIR")
    assert series_read(read_volume(cd))["series_uid"] == CT_UID  # no endless loop; orphans are still read
    data = (cd / "DICOMDIR").read_bytes()
    (cd / "DICOMDIR").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="DICOMDIR") as error:
        check_study(cd)
    assert "\n" not in str(error.value) and ("damaged" in str(error.value) or "truncated" in str(error.value))


def test_links_out_of_a_study_without_dicomdir_are_not_followed(nested_study, tmp_path):
    outside = tmp_path / "elsewhere"
    write_series(outside, "1.2.826.0.1.3680043.8.498.299", 8, "Not in the study")
    os.symlink(outside, nested_study / "linked-folder")
    os.symlink(outside / "IM0000", nested_study / "linked-file")
    study, checks = check_study(nested_study)
    assert "8" not in {c.series.number for c in checks}
    assert "linked-file (a link to a file outside the study folder)" in study.skipped


# ---- batch ------------------------------------------------------------------------------------

def test_batch_reads_study_folders_as_cases_and_records_the_series(nested_study, tmp_path, tiny_seg_bundle):
    """The batch steps in this process (the pool around them has its own tests in test_batch.py):
    a folder cohort of studies, each case read with the same rule, the series in results.csv."""
    from coralbay.batch.case import CaseJob, prepare_case, process_case
    from coralbay.batch.cohort import read_cohort
    from coralbay.batch.results import write_results
    from coralbay.io.volumes import VOLUME_SUFFIXES

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.move(str(nested_study), cohort / "study-a")
    write_series(cohort / "study-b" / "A", CT_UID, 3, "Abdomen 2mm")
    write_series(cohort / "study-b" / "B", TILTED_UID, 5, "Abdomen 2mm again")
    output = tmp_path / "batch"
    (output / "cases").mkdir(parents=True)
    job = CaseJob(str(output), str(tiny_seg_bundle), None, False, "cpu", None, None, False, 1.0, None, "m", "s")
    records = [process_case(case, job, prepare_case(case, job)) for case in read_cohort(cohort, VOLUME_SUFFIXES)]
    write_results(output, records, {"cohort": str(cohort)})
    rows = {row["id"]: row for row in csv.DictReader(open(output / "results.csv"))}
    assert rows["study-a"]["status"] == "done", rows["study-a"]["error"]
    assert rows["study-a"]["series"] == "3" and rows["study-a"]["series_uid"] == CT_UID
    assert rows["study-b"]["status"] == "failed"  # two regular CT volumes and no way to choose
    assert "2 of them regular CT volumes; choose one with --series" in rows["study-b"]["error"]
    assert sitk.ReadImage(str(output / "cases" / "study-a" / "labels.nii.gz")).GetSize() == (16, 16, 6)
    if (output / "results.parquet").exists():  # pyarrow installed: the same columns, as text
        import pyarrow.parquet as pq

        table = pq.read_table(output / "results.parquet")
        assert table.column("series").to_pylist() == ["3", None]


# ---- interact ---------------------------------------------------------------------------------

def test_interact_opens_the_series_named_by_the_option_or_the_request(nested_study, tmp_path, cli, tiny_seg_bundle):
    write_series(nested_study / "PATIENT" / "CT" / "SE5", "1.2.826.0.1.3680043.8.498.206", 5, "Abdomen 5mm")
    requests = [{"id": 1, "type": "open", "image": str(nested_study), "series": "42"},
                {"id": 2, "type": "open", "image": str(nested_study)},
                {"id": 3, "type": "quit"}]
    done = cli("interact", "--model", tiny_seg_bundle, "--output-dir", tmp_path / "out", "--series", "5",
               input="".join(json.dumps(r) + "\n" for r in requests))
    assert done.returncode == 0, done.stderr
    answers = {e["id"]: e for e in map(json.loads, done.stdout.splitlines())
               if e.get("id") and e["event"] in ("result", "error")}
    assert answers[1]["event"] == "error" and answers[1]["exit_code"] == 2 and "no series 42" in answers[1]["message"]
    assert answers[2]["event"] == "result" and answers[2]["series"] == "5"


# ---- detached headers -------------------------------------------------------------------------

def write_raw(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.arange(4 * 4 * 4, dtype=np.int16).tobytes())


NHDR = "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspacings: 1 1 1\nencoding: raw\nendian: little\n"
MHD = ("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
       "ElementByteOrderMSB = False\n")


@pytest.mark.parametrize("header, data_line, expected", [
    ("image.nhdr", "data file: {outside}", "outside"),
    ("image.nhdr", "data file: ../outside.raw", "outside"),
    ("image.nhdr", "data file: LIST\ninside.raw\n../outside.raw", "outside"),
    ("image.nhdr", "data file: ../piece%d.raw 0 3 1", "outside"),
    ("image.nhdr", "data file: /etc/hostname", "outside"),
    ("image.nhdr", "data file: sub/../../outside.raw", "outside"),
    ("image.nhdr", "data file: link.raw", "outside"),
    ("image.nhdr", "data file: sub/inside.raw", "read"),
    ("image.nhdr", "data file: piece%d.raw 0 3 1", "read"),
    ("image.mhd", "ElementDataFile = {outside}", "outside"),
    ("image.mhd", "ElementDataFile = ../outside.raw", "outside"),
    ("image.mhd", "ElementDataFile = LIST\n../outside.raw", "outside"),
    ("image.mhd", "ElementDataFile = sub/inside.raw", "read"),
])
def test_detached_data_files_must_lie_in_the_header_folder(tmp_path, header, data_line, expected):
    folder = write_detached(tmp_path, header, data_line)
    if expected == "read":
        assert read_volume(folder / header).GetSize() == (4, 4, 4)
        return
    with pytest.raises(InputError) as error:
        read_volume(folder / header)
    assert "which lies outside the header's folder; only data files in that folder" in str(error.value)


def test_a_header_naming_a_file_outside_its_folder_exits_1_with_one_sentence(tmp_path, cli):
    folder = write_detached(tmp_path, "image.nhdr", "data file: ../outside.raw")
    done = cli("info", folder / "image.nhdr")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (f"coralbay: error: The header {folder / 'image.nhdr'} names the data file "
                                   "../outside.raw, which lies outside the header's folder; only data files in "
                                   "that folder or below it are read.")


def write_detached(tmp_path: Path, header: str, data_line: str) -> Path:
    """A 4x4x4 int16 detached header in tmp_path/case, data files inside and outside its folder."""
    folder = tmp_path / "case"
    for name in ("inside.raw", "sub/inside.raw", "../outside.raw"):
        write_raw(folder / name)
    for k in range(4):  # one 4x4 slice per file, for the pattern form
        for piece in (folder / f"piece{k}.raw", tmp_path / f"piece{k}.raw"):
            piece.write_bytes(np.full((4, 4), k, np.int16).tobytes())
    os.symlink(tmp_path / "outside.raw", folder / "link.raw")
    line = data_line.format(outside=tmp_path / "outside.raw")
    text = (NHDR + line + "\n") if header.endswith(".nhdr") else (MHD + line + "\n")
    (folder / header).write_text(text)
    return folder


def test_a_data_file_name_with_a_nul_byte_or_a_link_loop_gets_one_sentence(tmp_path):
    folder = write_detached(tmp_path, "image.nhdr", "data file: a\x00b.raw")
    with pytest.raises(InputError, match=r"names an invalid data file \('a\\x00b.raw'\)"):
        read_volume(folder / "image.nhdr")
    os.symlink("loop-b", folder / "loop-a")
    os.symlink("loop-a", folder / "loop-b")
    (folder / "image.nhdr").write_text(NHDR + "data file: loop-a\n")
    with pytest.raises(InputError, match=r"names an invalid data file \('loop-a'\)"):
        read_volume(folder / "image.nhdr")

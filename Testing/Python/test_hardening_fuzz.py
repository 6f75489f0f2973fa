"""Fuzzing the volume readers with hostile NIfTI, NRRD, MetaImage and DICOM files (issue 7, item 1).

Every case is read in a sandboxed child process (fuzz_support.ReaderSandbox), so a crash or a
hang of ITK/GDCM shows up as a failure instead of killing pytest. The property: the reader
refuses with a CoralBayError whose message is one clean sentence, or returns a sane 3D scalar
volume (and the right one when the file was not mutated).

Inside the suite the examples are few and derandomised (same cases every run, < 30 s). A longer,
random run (the cases that fail are saved under build/fuzz-failures/ for the corpus):

    CORALBAY_FUZZ_EXAMPLES=3000 python -m pytest Testing/Python/test_hardening_fuzz.py -k fuzz_ -x
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_support as fs

LONG_RUN = int(os.environ.get("CORALBAY_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int):
    return settings(max_examples=LONG_RUN or examples, deadline=None, derandomize=not LONG_RUN,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def sandbox():
    box = fs.ReaderSandbox()
    yield box
    box.stop()


def test_the_sandbox_reports_crashes_and_hangs(tmp_path):
    """The harness itself: a reader that aborts or never returns is a failure, not a lost test."""
    box = fs.ReaderSandbox(timeout=3)
    try:
        crash = box.read(tmp_path, "selftest-abort")
        hang = box.read(tmp_path, "selftest-hang")
        after = box.read(tmp_path / "missing.nrrd")  # a fresh child carries on
    finally:
        box.stop()
    assert crash["status"] == "crash" and fs.outcome_problems(crash)
    assert hang["status"] == "hang" and fs.outcome_problems(hang)
    assert after["status"] == "error" and "does not exist" in after["message"]


@fuzz_settings(60)
@given(case=fs.nrrd_cases())
def test_fuzz_nrrd(sandbox, case):
    fs.check_case(sandbox, case)


@fuzz_settings(15)
@given(case=fs.nrrd_cases(reader="label"))
def test_fuzz_nrrd_as_label_map(sandbox, case):
    fs.check_case(sandbox, case)


@fuzz_settings(50)
@given(case=fs.mha_cases())
def test_fuzz_metaimage(sandbox, case):
    fs.check_case(sandbox, case)


@fuzz_settings(50)
@given(case=fs.nifti_cases())
def test_fuzz_nifti(sandbox, case):
    fs.check_case(sandbox, case)


@fuzz_settings(15)
@given(case=fs.nifti_cases(reader="any"))
def test_fuzz_nifti_read_image_any(sandbox, case):
    fs.check_case(sandbox, case)


@fuzz_settings(30)
@given(case=fs.dicom_cases())
def test_fuzz_dicom_series(sandbox, case):
    fs.check_case(sandbox, case)


@pytest.mark.parametrize("fmt", fs.DAMAGED_FORMATS)
def test_fuzz_damaged_compressed_data(sandbox, fmt):
    """Cut or changed compressed data (an interrupted copy, a bad disk) is never read as valid.

    Every compressed format we read, cut at random offsets and with a random byte changed; for
    the label-map readers too (seg.nrrd through read_labels, gzip NIfTI as a label map below).
    """
    if fmt == "dicom-jpeg2000" and fs.real_jpeg2000_slices() is None:
        pytest.skip("the real JPEG 2000 series of ../shared/data is not present beside the clone")

    @fuzz_settings(12)
    @given(case=fs.damaged_cases(fmt))
    def check(case):
        fs.check_case(sandbox, case)

    check()


@fuzz_settings(8)
@given(case=fs.damaged_cases("nii.gz"))
def test_fuzz_damaged_label_map(sandbox, case):
    case.reader = "label"
    fs.check_case(sandbox, case)


# ---- the corpus of cases that once failed ----------------------------------------------------

CORPUS = sorted(p for p in fs.CORPUS_DIR.iterdir() if (p / "case.json").is_file()) \
    if fs.CORPUS_DIR.is_dir() else []


def materialise(case_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Copy a corpus case to a scratch folder (with the empty sub-folder some headers name)."""
    meta = json.loads((case_dir / "case.json").read_text())
    work = tmp_path / case_dir.name
    shutil.copytree(case_dir, work, ignore=shutil.ignore_patterns("case.json"))
    (work / "sub").mkdir(exist_ok=True)
    return work / meta["entry"], meta


def test_corpus_is_present():
    assert len(CORPUS) >= 20, f"expected the regression corpus in {fs.CORPUS_DIR}"


@pytest.mark.parametrize("case_dir", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_case_is_refused_cleanly(sandbox, case_dir, tmp_path):
    entry, meta = materialise(case_dir, tmp_path)
    outcome = sandbox.read(entry, meta["reader"])
    assert fs.outcome_problems(outcome) == [], f"{case_dir.name} (once: {meta['found']})"
    assert outcome["status"] == meta["expect"], outcome
    assert meta["message_contains"] in outcome["message"], outcome["message"]


CLI_CASES = ["mha-no-element-type", "nhdr-huge-sizes", "nifti-datatype-zero", "dicom-trailing-garbage"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_info_on_a_bad_file_prints_one_sentence(cli, name, tmp_path):
    """`coralbay info BADFILE`: exit 1, one line on stderr, nothing on stdout, no traceback."""
    entry, _ = materialise(fs.CORPUS_DIR / name, tmp_path)
    result = cli("info", entry, timeout=120)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coralbay: error: "), result.stderr
    assert lines[0].endswith("."), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


# ---- real files must read exactly as before the checks --------------------------------------

REAL_FILES = ["totalseg/example_ct_sm.nii.gz", "totalseg/example_seg.nii.gz", "pyradiomics/lung1_image.nrrd",
              "pyradiomics/lung1_label.nrrd", "dcmqi/liver_seg.nrrd"]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_read_exactly_as_itk_reads_them(shared_data, name):
    """The header checks must not refuse or alter real data: same grid and voxels as plain ITK."""
    import numpy as np
    import SimpleITK as sitk

    from coralbay.io.volumes import read_volume

    ours, plain = read_volume(shared_data / name), sitk.ReadImage(str(shared_data / name))
    assert ours.GetSize() == plain.GetSize() and ours.GetPixelID() == plain.GetPixelID()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(ours, getter)(), getattr(plain, getter)(), atol=1e-6), getter
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(plain))


# ---- things that would block forever ------------------------------------------------------------

def test_fifo_as_detached_data_file_is_refused_without_blocking(sandbox, tmp_path):
    """A FIFO (or /dev/stdin) as NRRD data file would block ITK forever: refused before reading."""
    os.mkfifo(tmp_path / "pipe.raw")
    header = tmp_path / "image.nhdr"
    header.write_text("NRRD0004\ntype: short\nendian: little\ndimension: 3\nsizes: 2 2 2\n"
                      "encoding: raw\ndata file: pipe.raw\n")
    outcome = sandbox.read(header)
    assert outcome["status"] == "error", outcome
    assert "not a regular data file" in outcome["message"]


def test_fifo_in_a_dicom_folder_is_skipped_without_blocking(sandbox, tmp_path):
    import numpy as np

    for k in range(3):
        ds = fs.dicom_slice(np.full((8, 8), 1000, np.uint16), (0.0, 0.0, 2.0 * k), instance=k + 1)
        (tmp_path / f"s{k}.dcm").write_bytes(fs.dicom_bytes(ds))
    os.mkfifo(tmp_path / "fifo")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    outcome = sandbox.read(tmp_path)
    assert outcome["status"] == "ok", outcome
    assert outcome["image"]["size"] == [8, 8, 3]

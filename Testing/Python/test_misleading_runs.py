"""Damaged files through every command that reads them, and the runs that misled (issue 21).

Each case is a real file on disk and the real `coralbay` command line (in-process `main` where no
model runs, real subprocesses where one does): one sentence on stderr, the exit code of the one
rule in docs/cli.md (2: the command line is wrong, outputs named wrongly included; 1: an input
cannot be used or the run fails), nothing written.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, cli_env, run_cli
from coralbay.cli import main


def _label_map(size=(24, 20, 16), spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    array = np.zeros(size[::-1], np.uint8)
    array[4:12, 4:14, 4:16] = 1
    array[4:12, 12:18, 16:22] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _ct(size=(24, 20, 16)) -> sitk.Image:
    array = np.random.default_rng(1).integers(-1000, 1200, size[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    return image


def _cut(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A CT, a label map with its sidecar (written by the engine), one without, a cut CT."""
    from coralbay.io.label_maps import write_label_map
    from coralbay.io.labels import LabelTable

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sitk.WriteImage(_ct(), str(inputs / "ct.nii.gz"))
    write_label_map(_label_map(), LabelTable.generic([1, 2]), inputs / "labels.nii.gz")
    sitk.WriteImage(_label_map(), str(inputs / "bare.nii.gz"))
    _cut(inputs / "ct.nii.gz", inputs / "cut.nii.gz")
    _cut(inputs / "labels.nii.gz", inputs / "cut_labels.nii.gz")
    return {p.name.split(".")[0]: p for p in inputs.iterdir()}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("coralbay: error: ")]
    assert len(lines) == 1 and "Traceback" not in err and "Unexpected" not in err, err
    return lines[0]


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---- one exit-code rule ------------------------------------------------------------------------

WRONG_OUTPUTS = {  # the same mistake (an output named wrongly) in every command: exit 2
    "segment to a text file": ["segment", "{ct}", "-m", "no-such-model", "-o", "{out}/x.txt"],
    "export nifti to .nrrd": ["export", "{labels}", "--format", "nifti", "-o", "{out}/x.nrrd"],
    "classify to a text file": ["classify", "{ct}", "-m", "no-such-model", "-o", "{out}/r.txt"],
    "compare into a foreign folder": ["compare", "{labels}", "{labels}", "-o", "{out}/foreign"],
    "compare into a file name": ["compare", "{labels}", "{labels}", "-o", "{out}/c.nii.gz"],
    "stl meshes into a file name": ["export", "{labels}", "--format", "stl", "-o", "{out}/liver.stl"],
    "batch into a file name": ["batch", "{inputs}", "-m", "no-such-model", "-o", "{out}/results.csv"],
    "segment into a missing folder": ["segment", "{ct}", "-m", "no-such-model", "-o", "{out}/missing/x.nii.gz"],
}


@pytest.mark.parametrize("name", sorted(WRONG_OUTPUTS))
def test_a_wrongly_named_output_is_a_usage_error_everywhere(name, files, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "foreign").mkdir(parents=True)
    (out / "foreign" / "notes.txt").write_text("mine")
    before = _entries(out)
    argv = [a.format(ct=files["ct"], labels=files["labels"], inputs=files["ct"].parent, out=out)
            for a in WRONG_OUTPUTS[name]]
    code = main([*argv, "--progress", "none"])
    _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert _entries(out) == before and (out / "foreign" / "notes.txt").read_text() == "mine"


# ---- damaged files -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["info", "{cut}"],
    ["compare", "{labels}", "{cut_labels}", "-o", "{out}/review"],
    ["compare", "{cut_labels}", "{labels}", "-o", "{out}/review"],
    ["export", "{cut_labels}", "--format", "seg.nrrd", "-o", "{out}/x.seg.nrrd"],
])
def test_a_cut_gzip_file_is_refused_by_every_reader(argv, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = main([a.format(**files, out=out) for a in argv])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "cut short" in line and "cut" in line
    assert _entries(out) == set()


def test_segment_refuses_a_cut_scan_and_keeps_the_earlier_output(files, tiny_seg_bundle, tmp_path, capsys):
    previous = tmp_path / "labels.nii.gz"
    previous.write_bytes(b"earlier result")
    code = main(["segment", str(files["cut"]), "-m", str(tiny_seg_bundle), "-o", str(previous), "--progress", "none"])
    assert code == 1 and "cut short" in _one_error_line(capsys.readouterr().err)
    assert previous.read_bytes() == b"earlier result" and _entries(tmp_path) == {"labels.nii.gz", "inputs"}


def test_interactive_open_refuses_a_damaged_scan_and_stays_usable(files, tiny_seg_bundle, tmp_path):
    damaged = bytearray(files["ct"].read_bytes())
    damaged[len(damaged) // 2] ^= 0x55
    (tmp_path / "damaged.nii.gz").write_bytes(bytes(damaged))
    command = [sys.executable, "-m", "coralbay", "interact", "--model", str(tiny_seg_bundle),
               "--output-dir", str(tmp_path / "out"), "--examples", str(tmp_path / "examples")]
    requests = [{"id": 1, "type": "open", "image": str(tmp_path / "damaged.nii.gz")},
                {"id": 2, "type": "open", "image": str(files["ct"])}, {"id": 3, "type": "quit"}]
    result = subprocess.run(command, input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True,
                            text=True, env=cli_env(), cwd=REPO, timeout=300)
    answers = {e["id"]: e for e in map(json.loads, result.stdout.splitlines())
               if e.get("id") in (1, 2) and e["event"] in ("result", "error")}
    assert answers[1]["event"] == "error" and "damaged.nii.gz" in answers[1]["message"]
    assert "damaged" in answers[1]["message"] and "\n" not in answers[1]["message"]
    assert answers[2]["event"] == "result", result.stderr


# ---- compare and export that misled --------------------------------------------------------------

def test_compare_refuses_a_reference_covering_a_small_part_unless_told(files, tmp_path, capsys):
    from coralbay.io.label_maps import write_label_map
    from coralbay.io.labels import LabelTable

    part = tmp_path / "part.nii.gz"
    write_label_map(_label_map()[4:10, 4:10, 4:10], LabelTable.generic([1, 2]), part)
    code = main(["compare", str(files["labels"]), str(part), "-o", str(tmp_path / "review"), "--progress", "none"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "covers only" in line and not (tmp_path / "review").exists()
    code = main(["compare", str(files["labels"]), str(part), "-o", str(tmp_path / "review"), "--progress", "none",
                 "--partial-reference"])
    assert code == 0 and (tmp_path / "review" / "metrics.json").is_file()
    assert "covers" in capsys.readouterr().err  # still said, as a warning


def test_dicom_seg_refuses_labels_of_another_scan(shared_data, tmp_path, capsys):
    series = shared_data / "dcmqi" / "ct-3slice"
    phantom_labels = tmp_path / "organs.nii.gz"
    sitk.WriteImage(_label_map(origin=(-60.0, -60.0, -40.0)), str(phantom_labels))
    code = main(["export", str(phantom_labels), "--format", "dicom-seg", "--dicom-series", str(series),
                 "-o", str(tmp_path / "seg.dcm"), "--progress", "none"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "does not lie on the grid" in line and not (tmp_path / "seg.dcm").exists()
    # The labels made on that series still export (liver_seg.nrrd: same region, its own grid).
    code = main(["export", str(shared_data / "dcmqi" / "liver_seg.nrrd"), "--format", "dicom-seg",
                 "--dicom-series", str(series), "-o", str(tmp_path / "liver.dcm"), "--progress", "none"])
    assert code == 0 and (tmp_path / "liver.dcm").is_file()


def test_export_without_a_label_table_says_the_names_are_generic(files, tmp_path, capsys):
    assert main(["export", str(files["bare"]), "--format", "seg.nrrd", "-o", str(tmp_path / "x.seg.nrrd"),
                 "--progress", "none"]) == 0
    assert "without a label table" in capsys.readouterr().err
    assert main(["export", str(files["labels"]), "--format", "seg.nrrd", "-o", str(tmp_path / "y.seg.nrrd"),
                 "--progress", "none"]) == 0
    assert "without a label table" not in capsys.readouterr().err


# ---- a folder cohort ---------------------------------------------------------------------------

def test_folder_cohort_uses_its_cohort_csv_and_says_so(tmp_path):
    from coralbay.batch.cohort import read_cohort
    from coralbay.batch.engine import VOLUME_SUFFIXES

    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "cohort.csv").write_text("id,image\nonly_a,a.nii.gz\n")
    notes: list[str] = []
    cases = read_cohort(tmp_path, VOLUME_SUFFIXES, notes)
    assert [c.id for c in cases] == ["only_a"] and "cohort.csv" in notes[0]


def test_folder_cohort_pairs_references_and_reports_damage_and_warnings(files, tiny_seg_bundle, tmp_path):
    """References beside the scans are not segmented as CT; a cut scan fails alone with its
    sentence; the "not CT" warning reaches stderr, results.csv and summary.json."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    sitk.WriteImage(_ct(), str(cohort / "p1.nii.gz"))
    sitk.WriteImage(_label_map(), str(cohort / "p1_seg.nii.gz"))
    sitk.WriteImage(_label_map(), str(cohort / "orphan_mask.nii.gz"))
    mr_like = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 255, (16, 20, 24)).astype(np.uint8))
    mr_like.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(mr_like, str(cohort / "mr.nii.gz"))
    _cut(files["ct"], cohort / "cut.nii.gz")
    out = tmp_path / "out"
    result = run_cli("batch", cohort, "-m", tiny_seg_bundle, "-o", out, "--compare", "--progress", "none",
                     timeout=600)
    assert result.returncode == 1, result.stderr  # one case failed
    with open(out / "results.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"p1", "mr", "cut"}  # no reference label map became a case
    assert rows["cut"]["status"] == "failed" and "cut short" in rows["cut"]["error"]
    assert rows["p1"]["status"] == "done" and rows["p1"]["reference"].endswith("p1_seg.nii.gz")
    assert any(value for key, value in rows["p1"].items() if key.startswith("dice:"))  # compared with p1_seg
    assert "do not look like CT" in rows["mr"]["warnings"]
    summary = json.loads((out / "summary.json").read_text())
    assert [w["id"] for w in summary["warnings"]] == ["mr"]
    assert any("Left out 2 reference label map(s)" in n and "1 paired" in n for n in summary["cohort_notes"])
    assert "Left out 2 reference label map(s)" in result.stderr
    assert "case mr: Intensities do not look like CT" in result.stderr


# ---- a classification that would run for long ----------------------------------------------------

@pytest.fixture
def wide_scan(tmp_path) -> Path:
    """320 x 320 x 80 mm at 4 mm: several windows of the tiny bundles (64 voxels at 4 mm)."""
    image = sitk.GetImageFromArray(np.random.default_rng(3).integers(-200, 300, (20, 80, 80)).astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "wide.nii.gz"))
    return tmp_path / "wide.nii.gz"


def test_classify_estimate_counts_the_windows_the_run_places(wide_scan, tiny_cls_bundle, capsys):
    from coralbay.bundle.loader import load_bundle
    from coralbay.inference.classify import prepare_classification
    from coralbay.inference.sliding_window import windows_needed
    from coralbay.io.volumes import read_volume

    manifest = load_bundle(tiny_cls_bundle).manifest
    prepared = prepare_classification(read_volume(wide_scan), manifest)
    settings = manifest.inference.windows()
    assert main(["classify", str(wide_scan), "-m", str(tiny_cls_bundle), "-o", str(wide_scan.parent / "unused.json"), "--estimate",
                 "--progress", "jsonl"]) == 0
    result = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    estimate = result["estimate"]
    assert estimate["windows"] == windows_needed(prepared.array.shape, settings.size, settings.overlap) > 1
    assert estimate["seconds_per_window"] > 0 and not (wide_scan.parent / "unused.json").exists()


def test_a_long_classification_is_refused_before_it_starts(wide_scan, tiny_cls_bundle, tmp_path, monkeypatch,
                                                           capsys):
    """The limit is lowered to 0 s so that the tiny model's run counts as long on any machine."""
    import coralbay.inference.classify as classify_module

    monkeypatch.setattr(classify_module, "LONG_RUN_S", 0.0)
    report = tmp_path / "report.json"
    code = main(["classify", str(wide_scan), "-m", str(tiny_cls_bundle), "-o", str(report), "--progress", "none"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and "windows" in line and "--allow-long-run" in line and "--point" in line
    assert not report.exists()
    assert main(["classify", str(wide_scan), "-m", str(tiny_cls_bundle), "-o", str(report), "--progress", "none",
                 "--allow-long-run"]) == 0
    assert report.is_file()


def test_classify_times_its_own_windows_and_runs_no_forward_only_to_time_it(wide_scan, tiny_cls_bundle, monkeypatch):
    """The long-run guard once timed two extra forwards before every run; now the run's own first
    windows are timed (one by one, then in batches). The real tiny encoder counts the windows it is
    given: a run forwards exactly its windows, `--estimate`'s function at most its first two, a
    refused run stops after its first two whatever the batch size, and a run those two finish is
    never refused."""
    import torch

    import coralbay.inference.classify as classify_module
    from coralbay.bundle.loader import load_bundle
    from coralbay.errors import ConfirmationNeeded
    from coralbay.io.volumes import read_volume

    bundle, image, cpu = load_bundle(tiny_cls_bundle), read_volume(wide_scan), torch.device("cpu")
    forwarded: list[int] = []  # windows per encoder forward
    bundle.network.encoder.register_forward_hook(lambda _m, inputs, _out: forwarded.append(len(inputs[0])))
    report = classify_module.classify_image(image, bundle, cpu, allow_long_run=False, window_batch_size=2)
    assert forwarded == [1, 1, 2] and report["windows"] == report["estimate"]["windows"] == 4
    forwarded.clear()
    estimate = classify_module.estimate_classification(classify_module.prepare_classification(image, bundle.manifest),
                                                       bundle, cpu, window_batch_size=2)
    assert estimate.windows == 4 and forwarded in ([1], [1, 1])
    monkeypatch.setattr(classify_module, "LONG_RUN_S", 0.0)
    forwarded.clear()
    with pytest.raises(ConfirmationNeeded, match="4 windows"):
        classify_module.classify_image(image, bundle, cpu, allow_long_run=False, window_batch_size=64)
    assert forwarded == [1, 1]
    forwarded.clear()
    two = classify_module.classify_image(image[:40], bundle, cpu, allow_long_run=False)  # 2 windows: done, kept
    assert forwarded == [1, 1] and two["windows"] == 2 and two["estimate"]["long"]


def test_a_cut_accepted_example_mask_is_refused(tmp_path):
    """Teach model and the examples proposal read accepted masks through the same checked reader."""
    from coralbay.errors import InputError
    from coralbay.io.example_masks import read_mask, write_accepted
    from coralbay.io.examples import read_example_scan

    reference = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.int16))
    mask = np.zeros((6, 7, 8), bool)
    mask[2:4, 2:5, 3:6] = True
    write_accepted(tmp_path, "scan1", "ct.nii.gz", "liver", 1, mask, reference)
    scan = read_example_scan(tmp_path / "scan1")
    structure = scan.structures[0]
    assert np.array_equal(read_mask(structure), mask)
    _cut(Path(structure.mask), Path(structure.mask))
    with pytest.raises(InputError, match="cut short"):
        read_mask(structure)

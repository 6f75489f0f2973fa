"""`coralbay batch` on real small phantoms with the tiny bundle: the local pool and a real Dask
LocalCluster on loopback, a worker SIGKILLed mid-case, a corrupt scan, an interrupted run resumed,
and each bad input's sentence."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli_env, run_cli

GOOD = ("c0", "c1", "c2", "c3")
KILLED = "c1"  # its worker SIGKILLs itself the first time it starts this case
PHANTOM_SIZE_MM = (180.0, 150.0, 120.0)


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _rows(output: Path) -> dict[str, dict]:
    with open(output / "results.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("coralbay: error:")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four small phantoms (4 mm) with their label maps, and one corrupt scan."""
    from coralbay.phantom import generate_phantom, write_phantom

    folder = tmp_path_factory.mktemp("cohort")
    lines = ["id,image,reference,point"]
    for seed, case_id in enumerate(GOOD):
        phantom = generate_phantom(seed, spacing=4.0, size_mm=PHANTOM_SIZE_MM)
        write_phantom(phantom, folder / f"{case_id}.nii.gz", folder / f"{case_id}_ref.nii.gz")
        centre = phantom.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in phantom.image.GetSize()])
        point = '"' + ",".join(f"{v:.2f}" for v in centre) + '"' if case_id == "c3" else ""
        lines.append(f"{case_id},{case_id}.nii.gz,{case_id}_ref.nii.gz,{point}")
    (folder / "bad.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream" * 20)
    lines.append("bad,bad.nii.gz,c0_ref.nii.gz,")
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n")
    return folder


def _run_batch(cohort: Path, bundle: Path, classifier: Path, output: Path, *extra: str, kill_marker: Path):
    # With the local pool's look-ahead on (off by default), so a worker that dies holds a case given in advance.
    return run_cli("batch", cohort / "cohort.csv", "-m", bundle, "-o", output, "--compare",
                   "--classify-model", classifier, "--progress", "none", *extra,
                   env={"CORALBAY_BATCH_KILL_ONCE": f"{KILLED}:{kill_marker}", "CORALBAY_BATCH_LOOKAHEAD": "1"},
                   timeout=300)


@pytest.fixture(scope="module")
def local_run(cohort, tiny_seg_bundle, tiny_cls_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    result = _run_batch(cohort, tiny_seg_bundle, tiny_cls_bundle, folder / "out", "--workers", "2",
                        kill_marker=folder / "killed.marker")
    return folder / "out", folder / "killed.marker", result


@pytest.fixture(scope="module")
def dask_run(cohort, tiny_seg_bundle, tiny_cls_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    result = _run_batch(cohort, tiny_seg_bundle, tiny_cls_bundle, folder / "out", "--cluster", "local:2",
                        kill_marker=folder / "killed.marker")
    return folder / "out", folder / "killed.marker", result


@pytest.mark.parametrize("which", ["local_run", "dask_run"])
def test_corrupt_scan_fails_alone_and_killed_worker_is_retried(which, request):
    output, marker, result = request.getfixturevalue(which)
    rows = _rows(output)
    assert result.returncode == 1, result.stderr
    assert _errors(result.stderr) == [
        "coralbay: error: 1 of 5 cases failed (their rows in " f"{output}/results.csv say why); the other cases are done."]
    assert [rows[c]["status"] for c in GOOD] == ["done"] * 4
    assert rows["bad"]["status"] == "failed"
    assert rows["bad"]["error"].endswith(".") and "\n" not in rows["bad"]["error"] and "bad.nii.gz" in rows["bad"]["error"]
    assert not (output / "cases" / "bad").exists()
    # The worker really died on KILLED (the marker holds its pid), and the case finished on another.
    killed_pid = int(marker.read_text())
    record = json.loads((output / "cases" / KILLED / "case.json").read_text())
    assert record["worker"]["pid"] != killed_pid
    if which == "local_run":
        assert rows[KILLED]["attempts"] == "2"
        # A case given to the dead worker in advance went back untried.
        assert [rows[c]["attempts"] for c in GOOD if c != KILLED] == ["1"] * 3
        # Workers prepared cases ahead (on a thread while the network ran the one before).
        ahead = [json.loads((output / "cases" / c / "case.json").read_text())["worker"]["prepared_ahead"] for c in GOOD]
        assert any(ahead) and not all(ahead)
    # Only whole case folders, no temporaries left behind.
    assert sorted(p.name for p in (output / "cases").iterdir()) == sorted(GOOD)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"] == {"done": 4, "skipped": 0, "failed": 1, "pending": 0}
    assert (output / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pyarrow.parquet as pq

    table = pq.read_table(output / "results.parquet").to_pydict()
    assert table["id"] == ["c0", "c1", "c2", "c3", "bad"]
    assert table["dice:liver"][0] == float(rows["c0"]["dice:liver"])


def test_model_loaded_once_per_worker(local_run):
    output = local_run[0]
    loads: dict[int, int] = {}
    for case_id in GOOD:
        worker = json.loads((output / "cases" / case_id / "case.json").read_text())["worker"]
        loads[worker["pid"]] = loads.get(worker["pid"], 0) + (not worker["model_cached"])
    assert set(loads.values()) == {1}  # every worker that finished cases loaded the model once
    assert sum(1 for _ in GOOD) > len(loads)  # and some worker ran more than one case with it


def test_same_labels_and_classes_as_segment_and_classify_case_by_case(local_run, cohort, tiny_seg_bundle,
                                                                      tiny_cls_bundle, tmp_path):
    output = local_run[0]
    # `coralbay segment` for each case, in one interpreter (the command's own main) to pay torch's import once.
    calls = [["segment", str(cohort / f"{c}.nii.gz"), "-m", str(tiny_seg_bundle), "-o", str(tmp_path / f"{c}.nii.gz"),
              "--progress", "none"] for c in GOOD]
    point = next(r for r in csv.DictReader(open(cohort / "cohort.csv")) if r["id"] == "c3")["point"]
    calls += [["classify", str(cohort / "c0.nii.gz"), "-m", str(tiny_cls_bundle), "-o", str(tmp_path / "c0.json"),
               "--progress", "none"],
              ["classify", str(cohort / "c3.nii.gz"), "-m", str(tiny_cls_bundle), "-o", str(tmp_path / "c3.json"),
               f"--point={point}", "--progress", "none"]]
    script = f"import sys\nfrom coralbay.cli import main\nsys.exit(max(main(a) for a in {calls!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    for case_id in GOOD:
        single = tmp_path / f"{case_id}.nii.gz"
        batch_labels = output / "cases" / case_id / "labels.nii.gz"
        a, b = sitk.ReadImage(str(batch_labels)), sitk.ReadImage(str(single))
        assert sitk.GetArrayViewFromImage(a).tobytes() == sitk.GetArrayViewFromImage(b).tobytes()  # byte for byte
        assert (a.GetPixelID(), a.GetSize(), a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == \
            (b.GetPixelID(), b.GetSize(), b.GetOrigin(), b.GetSpacing(), b.GetDirection())
        assert json.loads((output / "cases" / case_id / "labels.labels.json").read_text()) == \
            json.loads((tmp_path / f"{case_id}.labels.json").read_text())
    rows = _rows(output)
    for case_id in ("c0", "c3"):  # c3 around its point, c0 the whole scan
        single = json.loads((tmp_path / f"{case_id}.json").read_text())
        in_batch = json.loads((output / "cases" / case_id / "classification.json").read_text())
        assert in_batch["probabilities"] == single["probabilities"]
        assert in_batch["point_lps"] == single["point_lps"]
        assert rows[case_id]["classification"] == single["prediction"]
    assert json.loads((tmp_path / "c3.json").read_text())["point_lps"] is not None


def test_prepared_scan_travels_without_the_input_and_segments_as_segment_image(cohort, tiny_seg_bundle):
    """The CPU step's output (what goes from a CPU worker to a GPU worker) holds the model-grid
    volume and the input's geometry, not the input's voxels, and the network step on it, away from
    the input, gives `segment_image`'s labels byte for byte."""
    import pickle

    import torch
    from coralbay.bundle.loader import load_bundle
    from coralbay.errors import BundleError
    from coralbay.inference.segment import prepare_segmentation, segment_image, segment_prepared
    from coralbay.io.volumes import read_volume

    image = read_volume(str(cohort / "c1.nii.gz"))
    bundle = load_bundle(tiny_seg_bundle)
    cpu = torch.device("cpu")
    expected = segment_image(image, bundle, cpu).labels
    travelled = pickle.dumps(prepare_segmentation(image, bundle.manifest))
    scan = pickle.loads(travelled)
    input_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    # The model-grid volume and the model grid's (UInt8) carrier travel, the input's voxels do not.
    assert len(travelled) < scan.volume.nbytes + scan.grid.GetNumberOfPixels() + 4096 < scan.volume.nbytes + input_bytes
    labels = segment_prepared(scan, bundle, cpu).labels
    assert scan.volume is None  # handed to the network, freed after its last window
    assert sitk.GetArrayViewFromImage(labels).tobytes() == sitk.GetArrayViewFromImage(expected).tobytes()
    assert (labels.GetPixelID(), labels.GetSize(), labels.GetOrigin(), labels.GetSpacing(), labels.GetDirection()) == \
        (expected.GetPixelID(), expected.GetSize(), expected.GetOrigin(), expected.GetSpacing(), expected.GetDirection())
    # A scan prepared for another model's grid is refused, not segmented on the wrong grid.
    other = prepare_segmentation(image, bundle.manifest, overlap=0.25)
    object.__setattr__(other, "windows", other.windows.with_(size=(32, 32, 32)))
    with pytest.raises(BundleError, match="prepared for another model's grid"):
        segment_prepared(other, bundle, cpu)


def test_results_metrics_equal_compare(local_run, cohort, tmp_path):
    output = local_run[0]
    rows = _rows(output)
    review = tmp_path / "review"
    result = run_cli("compare", output / "cases" / "c2" / "labels.nii.gz", cohort / "c2_ref.nii.gz",
                     "-o", review, "--image", cohort / "c2.nii.gz", "--progress", "none")
    assert result.returncode == 0, result.stderr
    standalone = json.loads((review / "metrics.json").read_text())
    assert sorted(p.name for p in (output / "cases" / "c2" / "review").iterdir()) == sorted(p.name for p in review.iterdir())
    assert len(standalone["structures"]) == 2
    for structure in standalone["structures"]:
        for key in ("dice", "hd95_mm", "assd_mm", "surface_dice", "volume_difference_percent"):
            cell = rows["c2"][f"{key}:{structure['name']}"]
            assert (float(cell) if cell else None) == structure[key], (structure["name"], key)
    for case_id in GOOD:  # every case's row holds its own review's numbers
        in_case = json.loads((output / "cases" / case_id / "review" / "metrics.json").read_text())
        assert in_case["prediction"] == str(output / "cases" / case_id / "labels.nii.gz")
        for structure in in_case["structures"]:
            assert float(rows[case_id][f"dice:{structure['name']}"]) == structure["dice"]


def test_local_pool_and_dask_give_identical_outputs(local_run, dask_run):
    local, dask = local_run[0], dask_run[0]
    local_rows, dask_rows = _rows(local), _rows(dask)
    varying = ("worker_host", "worker_pid", "attempts") + tuple(c for c in local_rows["c0"] if c.endswith("_s"))
    for case_id in (*GOOD, "bad"):
        a = {k: v for k, v in local_rows[case_id].items() if k not in varying}
        b = {k: v for k, v in dask_rows[case_id].items() if k not in varying}
        assert a == b, case_id
    for case_id in GOOD:
        for name in ("labels.nii.gz", "review/difference.nii.gz", "review/surface_distance.nii.gz"):
            assert np.array_equal(_labels(local / "cases" / case_id / name), _labels(dask / "cases" / case_id / name))
        for name in ("labels.labels.json", "review/metrics.csv"):
            assert (local / "cases" / case_id / name).read_text() == (dask / "cases" / case_id / name).read_text()


def test_interrupted_run_resumes_with_only_unfinished_cases(cohort, tiny_seg_bundle, tmp_path):
    cohort = _copy(cohort, tmp_path / "cohort")  # this test changes a scan
    lines = (cohort / "cohort.csv").read_text().splitlines()
    (cohort / "cohort.csv").write_text("\n".join(lines[:4]) + "\n")  # c0..c2: enough to interrupt between cases
    good = GOOD[:3]
    output = tmp_path / "out"
    command = [sys.executable, "-m", "coralbay", "batch", str(cohort / "cohort.csv"), "-m", str(tiny_seg_bundle),
               "-o", str(output), "--progress", "jsonl"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=cli_env(), start_new_session=True)
    try:
        for line in child.stdout:
            if json.loads(line).get("message", "").endswith(": done"):
                break
        os.killpg(child.pid, signal.SIGKILL)  # the parent and its workers, at once
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    finished = {p.name for p in (output / "cases").iterdir() if not p.name.startswith(".")}
    assert finished and finished < set(good)
    for case_id in finished:  # a case folder exists only whole
        assert json.loads((output / "cases" / case_id / "case.json").read_text())["status"] == "done"
    before = {c: (output / "cases" / c / "case.json").stat().st_ino for c in finished}

    rerun = run_cli(*command[3:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = _rows(output)
    assert {c for c in good if rows[c]["status"] == "skipped"} == finished
    assert {c for c in good if rows[c]["status"] == "done"} == set(good) - finished
    assert {c: (output / "cases" / c / "case.json").stat().st_ino for c in finished} == before

    # A changed input is redone (its content hash changed), and only it.
    from coralbay.phantom import generate_phantom

    changed = sorted(finished)[0]
    sitk.WriteImage(generate_phantom(99, spacing=4.0, size_mm=PHANTOM_SIZE_MM).image, str(cohort / f"{changed}.nii.gz"))
    touched = next(c for c in good if c != changed)  # new mtime, same content: its sha256 still matches
    stat = (cohort / f"{touched}.nii.gz").stat()
    os.utime(cohort / f"{touched}.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = run_cli(*command[3:], timeout=300)
    rows = _rows(output)
    assert again.returncode == 0, again.stderr
    assert [c for c in good if rows[c]["status"] == "done"] == [changed]
    assert rows[touched]["status"] == "skipped"


def test_changed_model_or_setting_changes_the_recorded_hashes(tiny_seg_bundle, cohort, tmp_path):
    from conftest import make_tiny_bundle
    from coralbay.batch.runner import BatchOptions, make_job

    base = BatchOptions(cohort=str(cohort / "cohort.csv"), model=str(tiny_seg_bundle), output=str(tmp_path / "o"))
    other_model = make_tiny_bundle(tmp_path / "other", seed=1)
    job = make_job(base)
    assert make_job(base).settings_hash == job.settings_hash and make_job(base).model_hash == job.model_hash
    assert make_job(BatchOptions(**{**base.__dict__, "overlap": 0.25})).settings_hash != job.settings_hash
    assert make_job(BatchOptions(**{**base.__dict__, "compare": True})).settings_hash != job.settings_hash
    assert make_job(BatchOptions(**{**base.__dict__, "model": str(other_model)})).model_hash != job.model_hash
    # The device and the number of workers do not change a case's outputs, so they redo nothing.
    assert make_job(BatchOptions(**{**base.__dict__, "workers": 2, "device": "cpu"})).settings_hash == job.settings_hash


def test_folder_cohort_lists_volume_files_and_series_folders(tmp_path):
    from coralbay.batch.cohort import read_cohort
    from coralbay.batch.engine import VOLUME_SUFFIXES

    for name in ("a.nii.gz", "b.nrrd", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series_3").mkdir()
    cases = read_cohort(tmp_path, VOLUME_SUFFIXES)
    assert [(c.id, Path(c.image).name) for c in cases] == [("a", "a.nii.gz"), ("b", "b.nrrd"), ("series_3", "series_3")]
    assert all(Path(c.image).is_absolute() and c.reference is None for c in cases)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreadable_csv", "duplicate_ids", "missing_image", "foreign_output",
                                  "unreachable_cluster", "unencrypted_remote_cluster", "bad_cluster_address"])
def test_bad_input_gives_one_sentence(case, cohort, tiny_seg_bundle, tmp_path):
    csv_path = tmp_path / "cohort.csv"
    output = tmp_path / "out"
    image = cohort / "c0.nii.gz"
    extra: list[str] = []
    env = {}
    expected_code, expected = 1, ""
    if case == "unreadable_csv":
        csv_path.write_bytes(b"\xff\xfe\x00id,image\x00\x81\x82")
        expected = f"The cohort file {csv_path} cannot be read as a UTF-8 CSV"
    elif case == "duplicate_ids":
        csv_path.write_text(f"id,image\na,{image}\nb,{image}\nA,{image}\n")
        expected = f"The cohort {csv_path} has the id 'A' more than once (also as 'a'); every case needs its own id."
    elif case == "missing_image":
        csv_path.write_text(f"id,image\na,{image}\nb,nowhere.nii.gz\n")
        expected = f"The image {tmp_path / 'nowhere.nii.gz'} of case b does not exist."
    elif case == "foreign_output":
        csv_path.write_text(f"id,image\na,{image}\n")
        output.mkdir()
        (output / "thesis.docx").write_text("years of work")
        expected_code = 2
        expected = f"The output folder {output} holds other files and is not an earlier coralbay batch; give a new or empty folder."
    elif case == "unreachable_cluster":
        csv_path.write_text(f"id,image\na,{image}\n")
        address = f"tcp://127.0.0.1:{_free_port()}"
        extra = ["--cluster", address]
        env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
        expected = f"The Dask scheduler at {address} cannot be reached within 2s"
    elif case == "unencrypted_remote_cluster":  # TEST-NET-1: never routed, so never reached
        csv_path.write_text(f"id,image\na,{image}\n")
        extra = ["--cluster", "tcp://192.0.2.1:8786"]
        env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
        expected = "The Dask scheduler at tcp://192.0.2.1:8786 cannot be reached within 2s"
    elif case == "bad_cluster_address":
        csv_path.write_text(f"id,image\na,{image}\n")
        extra = ["--cluster", "http://example.org"]
        expected_code = 2
        expected = "The cluster 'http://example.org' is not local:N (N >= 1) or a scheduler address"
    result = run_cli("batch", csv_path, "-m", tiny_seg_bundle, "-o", output, "--progress", "none", *extra,
                     env=env, timeout=120)
    assert result.returncode == expected_code, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"coralbay: error: {expected}"), result.stderr
    assert "Traceback" not in result.stderr
    warned = "warning: The connection to tcp://192.0.2.1:8786 is neither encrypted nor authenticated" in result.stderr
    assert warned == (case == "unencrypted_remote_cluster")
    if case == "foreign_output":  # nothing lost, nothing added
        assert [p.name for p in output.iterdir()] == ["thesis.docx"]
        assert (output / "thesis.docx").read_text() == "years of work"
    else:
        assert not output.exists()  # the run stopped before writing anything

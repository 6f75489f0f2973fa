"""The Slicer module's background engine runs (CoralBaySlicerLib.process / jobs), with real processes.

The engine is started the way Slicer starts it: through a launcher that runs Python as a child
(Slicer's PythonSlicer is such a launcher), here a two-line shell script, so cancelling must kill
the whole process tree, not just the launcher.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ENGINE_DIR
from CoralBaySlicerLib.jobs import JobController
from CoralBaySlicerLib.process import EngineBusyError, EngineRunner

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in is a POSIX shell script")


@pytest.fixture
def launcher(tmp_path) -> Path:
    """A launcher like PythonSlicer: a shell that runs this Python as a child (not exec)."""
    path = tmp_path / "PythonLauncher"
    path.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def runner(launcher, tmp_path) -> EngineRunner:
    return EngineRunner(launcher, ENGINE_DIR, temp_root=tmp_path / "runs")


def _descendants_appear(pid: int, timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children(recursive=True)
        if children:
            return children
        time.sleep(0.01)
    raise AssertionError("the launcher never started the engine")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_run_reads_output_and_removes_its_folder(runner, shared_data):
    volume = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    with runner.prepare("info") as run:
        run.start(runner.command(["info", str(volume), "--json"]))
    assert runner.busy
    assert run.wait(timeout=60) == "succeeded"
    assert run.returncode == 0
    text = run.full_log()
    assert '"size": [' in text and "122" in text  # the engine's own JSON summary came through
    folder = run.folder
    assert folder.is_dir()  # outputs stay readable until the caller closes the run
    run.close()
    assert not folder.exists()
    assert not runner.busy


def test_cancel_kills_the_whole_process_tree_and_leaves_no_files(runner, tmp_path, shared_data):
    with runner.prepare("cancel") as run:
        (run.folder / "input.nrrd").write_bytes(b"written by the module before the run")
        run.start(runner.command(["info", str(shared_data / "totalseg" / "example_ct_dicom")]))
    engine = _descendants_appear(run.pid)  # the Python child of the launcher is running now
    tree = [run.pid] + [p.pid for p in engine]
    run.cancel()
    assert run.state == "cancelled"
    assert all(_gone(pid) for pid in tree), "a process of the run survived Cancel"
    assert not run.folder.exists()
    assert list((tmp_path / "runs").iterdir()) == []
    assert not runner.busy


QUICK = [sys.executable, "-c", "print('done')"]  # where the engine itself is not what is tested


def test_a_second_run_is_refused_while_one_is_open(runner):
    with runner.prepare("first") as first:
        first.start(QUICK)
    with pytest.raises(EngineBusyError, match="still in progress"):
        with runner.prepare("second"):
            pass
    assert first.wait(timeout=60) == "succeeded"
    with pytest.raises(EngineBusyError):  # finished, but its outputs are still being read
        with runner.prepare("second"):
            pass
    first.close()
    with runner.prepare("third") as third:
        third.start(QUICK)
    assert third.wait(timeout=60) == "succeeded"
    assert third.lines == ["done"]
    third.close()


def test_engine_error_is_reported_as_its_one_sentence(runner, tmp_path):
    missing = tmp_path / "no-such-scan.nrrd"
    with runner.prepare("info") as run:
        run.start(runner.command(["info", str(missing)]))
    assert run.wait(timeout=60) == "failed"
    assert run.returncode == 1
    assert str(missing) in run.error or "does not exist" in run.error
    assert not run.error.startswith("coralbay: error:")
    assert "Traceback" not in run.error
    run.close()


def test_engine_killed_from_outside_is_reported(runner):
    with runner.prepare("crash") as run:
        run.start([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])
    deadline = time.monotonic() + 10
    while not run.lines and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.01)
    psutil.Process(run.pid).kill()
    assert run.wait(timeout=30) == "failed"
    assert "signal 9" in run.error
    run.close()
    assert not run.folder.exists()


def test_failure_while_writing_inputs_leaves_nothing(runner, tmp_path):
    jobs = JobController(runner)

    def write_inputs(folder):
        (folder / "partial.nrrd").write_bytes(b"half")
        raise ValueError("The volume could not be written for the engine.")

    with pytest.raises(ValueError, match="could not be written"):
        jobs.start("segmentation", write_inputs, lambda run: None)
    assert list((tmp_path / "runs").iterdir()) == []
    assert not jobs.busy


def test_failure_while_reading_outputs_is_reported_and_cleaned_up(runner, tmp_path):
    finished = []
    logged = []
    jobs = JobController(runner, on_log=lambda level, message: logged.append((level, message)),
                         on_finished=finished.append)

    def read_outputs(run):
        raise RuntimeError("The engine reported success but wrote no label map (labels.nii.gz).")

    job = jobs.start("segmentation", lambda folder: ["--version"], read_outputs)
    jobs.wait(timeout=60)
    assert job.state == "failed"
    assert job.error == "The engine reported success but wrote no label map (labels.nii.gz)."
    assert finished == [job]
    assert ("error", job.error) in logged
    assert list((tmp_path / "runs").iterdir()) == []
    assert not jobs.busy


def test_helpers_import_under_python_3_9():
    """Slicer 5.6 runs Python 3.9: the module's helpers must not use newer syntax at run time."""
    python39 = _find_python39()
    if python39 is None:
        pytest.skip("no Python 3.9 on this machine")
    modules = sorted(p.stem for p in (ENGINE_DIR / "CoralBaySlicerLib").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, py_compile\n"
            f"for m in {modules!r}: importlib.import_module('CoralBaySlicerLib.' + m)\n"
            "py_compile.compile('CoralBaySlicer.py', doraise=True)\n")
    done = subprocess.run([str(python39), "-c", code], cwd=ENGINE_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _find_python39() -> str | None:
    candidates = [*map(str, sorted(Path(os.path.expanduser("~/.pyenv/versions")).glob("3.9*/bin/python"))),
                  shutil.which("python3.9")]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None

"""The project as users install it: build a wheel, install it into a fresh virtual environment
outside the checkout, and run `coralbay models` and a small `coralbay segment` from there.

Why: an editable install or PYTHONPATH=CoralBaySlicer hides packaging mistakes (a wheel without
the demo bundles found no model). To stay offline and fast, the wheel is built without build
isolation (this environment's setuptools), installed with `--no-deps --no-index`, and the new
environment reaches the already installed dependencies through a `.pth` line naming this
environment's site-packages (a plain path: its own .pth files, such as the editable coralbay
of a development install, are not processed there).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a source distribution holds (MANIFEST.in, pyproject.toml): copied so the build writes
# nothing (build/, egg-info) into the checkout.
SOURCE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
SOURCE_DIRS = ("CoralBaySlicer/coralbay", "Resources/Models")

pytestmark = pytest.mark.slow


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, source / name)
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", wheels, source])
    wheel = next(wheels.glob("coralbay-*.whl"))

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
            if Path(p).is_dir()]
    (venv_site / "test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    # --ignore-installed: through the .pth line pip also sees this environment's (editable) coralbay
    # and would try to uninstall it first; the wheel must go into the new environment alone.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
          "-q", wheel])

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CORALBAY_BUILTIN_MODELS")}
    env.update(CORALBAY_HOME=str(work / "home"), OMP_NUM_THREADS="1")
    run_dir = work / "run"
    run_dir.mkdir()
    script = venv / ("Scripts/coralbay.exe" if os.name == "nt" else "bin/coralbay")
    return {"python": python, "coralbay": script, "env": env, "cwd": run_dir, "wheel": wheel,
            "site": venv_site}


def test_wheel_carries_the_demo_bundles_and_no_benchmark_harness(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for bundle in ("demo-phantom-seg", "demo-phantom-cls"):
        for part in ("manifest.json", "model.safetensors"):
            assert f"coralbay/Resources/Models/{bundle}/{part}" in names
    assert "coralbay/bundle/manifest.schema.json" in names
    assert not [n for n in names if n.startswith(("coralbay/bench/", "coralbay_bench/"))]


def test_installed_engine_is_the_wheel_not_the_checkout(installed):
    done = _run([installed["python"], "-c", "import coralbay, sys; print(coralbay.__file__)"],
                env=installed["env"], cwd=installed["cwd"])
    where = Path(done.stdout.strip()).resolve()
    assert where.is_relative_to(installed["site"].resolve()), where
    assert not where.is_relative_to(REPO)


def test_installed_models_lists_the_demo_bundles(installed):
    done = _run([installed["coralbay"], "models"], env=installed["env"], cwd=installed["cwd"])
    assert "demo-phantom-seg" in done.stdout and "demo-phantom-cls" in done.stdout
    assert str(installed["site"]) in done.stdout  # found inside the installed package
    assert str(REPO) not in done.stdout


def test_installed_segment_runs_the_demo_bundle(installed):
    import SimpleITK as sitk

    cwd, env, exe = installed["cwd"], installed["env"], installed["coralbay"]
    _run([exe, "phantom", "--seed", "3", "--output", "ct.nii.gz", "--labels", "truth.nii.gz",
          "--shape", "48,40,32", "--size-mm", "300,250,200"], env=env, cwd=cwd)
    _run([exe, "segment", "ct.nii.gz", "--model", "demo-phantom-seg", "--output", "labels.nii.gz",
          "--device", "cpu", "--progress", "none"], env=env, cwd=cwd)
    labels = sitk.ReadImage(str(cwd / "labels.nii.gz"))
    ct = sitk.ReadImage(str(cwd / "ct.nii.gz"))
    assert labels.GetSize() == ct.GetSize()
    values = set(sitk.GetArrayViewFromImage(labels).ravel().tolist())
    assert len(values - {0}) >= 3, values  # the trained demo head finds several organs
    assert (cwd / "labels.labels.json").is_file() or list(cwd.glob("labels*.json"))


def test_installed_bench_says_where_the_harness_is(installed):
    done = subprocess.run([str(installed["coralbay"]), "bench", "--model", "x"], capture_output=True,
                          text=True, env=installed["env"], cwd=installed["cwd"], timeout=120)
    assert done.returncode == 2
    assert "benchmark harness is not installed" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_installed_bench_help_says_how_to_get_the_harness(installed):
    done = _run([installed["coralbay"], "bench", "--help"], env=installed["env"], cwd=installed["cwd"])
    assert "pip install ./benchmarks" in " ".join(done.stdout.split())  # argparse wraps the line


def test_the_harness_installed_beside_the_wheel_registers_bench_itself(installed, tmp_path):
    """The harness is its own distribution (benchmarks/pyproject.toml) whose entry point gives the
    installed engine its `bench` command: no PYTHONPATH, and no engine import of the harness. (Last
    in this file: it adds the harness to the shared test environment.)"""
    source = tmp_path / "bench-source"
    source.mkdir()
    shutil.copy2(REPO / "benchmarks" / "pyproject.toml", source / "pyproject.toml")
    shutil.copytree(REPO / "benchmarks" / "coralbay_bench", source / "coralbay_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp_path / "wheels", source])
    wheel = next((tmp_path / "wheels").glob("coralbay_bench-*.whl"))
    _run([sys.executable, "-m", "pip", "--python", installed["python"], "install", "--no-deps", "--no-index",
          "--ignore-installed", "-q", wheel])
    done = _run([installed["coralbay"], "bench", "--help"], env=installed["env"], cwd=installed["cwd"])
    assert "--json" in done.stdout and "MONAI" in done.stdout  # the harness's own help

"""Shared fixtures: the real data beside the clone, and the `coralbay` command as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_DIR = REPO / "CoralBaySlicer"
BENCH_DIR = REPO / "benchmarks"  # the benchmark harness (coralbay_bench), not part of the installed engine
SHARED_DATA = Path(os.environ.get("CORALBAY_SHARED_DATA", REPO.parent / "shared" / "data"))

# Tests share two CPU cores with each other and with CI; one thread per process keeps them fair.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT data of ../shared/data (never copied into the repository)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present beside the clone")
    return SHARED_DATA


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_DIR), str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str | os.PathLike, timeout: float = 600, env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m coralbay ARGS` as a real subprocess and capture its output (`env` adds variables)."""
    return subprocess.run([sys.executable, "-m", "coralbay", *map(str, args)], capture_output=True,
                          text=True, env={**cli_env(), **(env or {})}, timeout=timeout, **kwargs)


# One interpreter runs several commands: each `main(argv)` with its own stdout and stderr (the file
# descriptors themselves, so everything the command writes is caught) and its exit code.
_MANY = r"""
import json, os, sys, tempfile
from coralbay.cli import main
answers = []
for argv in json.loads(sys.argv[1]):
    streams = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush(); sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(streams[0].fileno(), 1); os.dup2(streams[1].fileno(), 2)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
    texts = []
    for stream in streams:
        stream.seek(0)
        texts.append(stream.read().decode("utf-8", "replace"))
    answers.append([code, *texts])
with open(sys.argv[2], "w") as handle:
    json.dump(answers, handle)
"""


def run_cli_many(*calls: list, timeout: float = 600, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Several `coralbay` commands in ONE fresh interpreter (torch and MONAI imported once), each with
    its own exit code, stdout and stderr, as `run_cli` gives them. For commands whose process of their
    own is not what a test checks; the `python -m coralbay` entry point is run by `run_cli` tests."""
    argvs = [[str(a) for a in call] for call in calls]
    with tempfile.TemporaryDirectory() as folder:
        answers = Path(folder) / "answers.json"
        done = subprocess.run([sys.executable, "-c", _MANY, json.dumps(argvs), str(answers)], capture_output=True,
                              text=True, env={**cli_env(), **(env or {})}, timeout=timeout)
        assert done.returncode == 0 and answers.is_file(), f"the commands' interpreter failed: {done.stderr[-2000:]}"
        results = json.loads(answers.read_text())
    return [subprocess.CompletedProcess(["coralbay", *argv], code, out, err)
            for argv, (code, out, err) in zip(argvs, results)]


@pytest.fixture
def cli():
    return run_cli


# Small real bundles of the CoralBay architecture (random weights, width 6, 64^3 windows at 4 mm),
# so model-running tests exercise the full code path in seconds.
TINY_LABELS = [
    {"value": 1, "name": "liver", "color": [221, 130, 101],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}},
    {"value": 2, "name": "spleen", "color": [157, 108, 162],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "78961009", "Spleen"]}},
]


def make_tiny_bundle(folder: Path, task: str = "segmentation", separate_backbone: bool = False,
                     spacing: float = 4.0, seed: int = 0) -> Path:
    from coralbay.bundle.factory import create_random_bundle, manifest_fields
    from coralbay.io.labels import LabelTable

    fields = manifest_fields(f"tiny-{task[:3]}", task, feature_size=6,
                             labels=LabelTable.from_dict(TINY_LABELS) if task == "segmentation" else None,
                             classes=["negative", "positive"] if task == "classification" else None,
                             spacing_mm=(spacing,) * 3, window_size=(64, 64, 64))
    return create_random_bundle(folder, fields, seed=seed, separate_backbone=separate_backbone)


@pytest.fixture(scope="session")
def tiny_seg_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-seg")


@pytest.fixture(scope="session")
def tiny_cls_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-cls", "classification", separate_backbone=True)


def write_interactive_phantom(folder: Path, seed: int = 10007, direction: str = "LPS",
                              size_mm: tuple[int, int, int] = (180, 150, 120),
                              spacing: float = 3.0) -> tuple[Path, Path]:
    """The small phantom the interactive tests click on (3 mm, 180 x 150 x 120 mm): CT and labels.
    Another `seed` / `direction` is a later scan of the same anatomy (other organ sizes, storage order)."""
    from coralbay.phantom import generate_phantom, write_phantom

    ph = generate_phantom(seed, spacing=spacing, size_mm=size_mm, lesions=False, direction=direction)
    folder.mkdir(parents=True, exist_ok=True)
    ct, labels = folder / "ct.nii.gz", folder / "labels.nii.gz"
    write_phantom(ph, ct, labels)
    return ct, labels

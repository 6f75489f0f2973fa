"""Shared fixtures: the real data beside the clone, and the `coralbay` command as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_DIR = REPO / "CoralBaySlicer"
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
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str | os.PathLike, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m coralbay ARGS` as a real subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "coralbay", *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout, **kwargs)


@pytest.fixture
def cli():
    return run_cli

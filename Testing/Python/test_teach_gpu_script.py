"""benchmarks/interactive/teach_gpu.py, the teach case of Testing/gpu_check.sh: it runs once on a
lent GPU, so every path of it is run here first, on the CPU at tiny sizes (two example scans, one
step, a feature size of 6 for the "U96B" case), and its figures are checked for what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "interactive" / "teach_gpu.py"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "CORALBAY_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)


def test_every_case_runs_and_its_figures_add_up(tmp_path):
    done = _run("--device", "cpu", "--example-seeds", "10010,10011", "--score-seeds", "10000", "--steps", "1",
                "--feature-size", "6", "--window", "64", "--spacing", "6", "--out", str(tmp_path / "out"),
                tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "teach-gpu.json").read_text())
    demo = report["demo"]
    assert set(demo["runs"]) == {"scratch-1", "incremental-2", "scratch-2"}
    for run in demo["runs"].values():
        assert run["wall_s"] > 0 and run["steps"] == 1 and 0.0 <= run["mean_dice"] <= 1.0
        assert len(run["dice"]) == 7
    share = demo["runs"]["incremental-2"]["wall_s"] / demo["runs"]["scratch-2"]["wall_s"]
    assert demo["incremental_over_scratch_wall"] == pytest.approx(share, abs=1e-3)
    u96b = report["u96b"]
    runs = list(u96b["runs"].values())
    assert [r["steps"] for r in runs] == [5, 5, 25] and u96b["feature_size"] == 6
    assert u96b["step_s"] == pytest.approx(max(runs[2]["wall_s"] - runs[1]["wall_s"], 0) / 20, abs=1e-3)
    assert u96b["projected_first_teach_200_steps_s"] == pytest.approx(runs[0]["wall_s"] + 195 * u96b["step_s"], abs=0.2)
    assert "cpu" in report["device"]


def test_without_cuda_it_says_so_in_one_sentence(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the check would run for minutes")
    done = _run("--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert done.returncode == 1 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines()[-1] == ("teach_gpu: no CUDA GPU is visible to PyTorch, so there is "
                                                    "nothing to measure here.")

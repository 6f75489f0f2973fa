"""`coralbay bench` on a tiny volume with a tiny random bundle: every field reported, Dice agreement.

The volume is chosen so that both paths must see the same single window: one window's size at
the model spacing, soft tissue everywhere (the body crop keeps all of it), stored LPS so that
MONAI's reorientation to RAS is a flip. Any disagreement beyond the bound is then a bug in one of
the paths (geometry, blending, restore), not a property of random weights. No timing thresholds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import cli_env
from coralbay_bench.agreement import DICE_BOUND
from coralbay_bench.runner import STAGES, TARGETS

PATH_FIELDS = {"stages_s", "total_s", "peak_rss_added_mb", "base_rss_mb", "peak_gpu_added_mb", "peak_gpu_mb",
               "windows_total", "windows_evaluated", "window_batch_size", "model_grid_shape",
               "flops_per_window", "torch_threads", "windows_per_s", "achieved_flops_per_s",
               "fraction_of_peak_bf16", "cpu_s", "peak_rss_added_mb_by_stage", "peak_gpu_added_mb_by_stage"}


@pytest.fixture(scope="module")
def tissue_ct(tmp_path_factory):
    """64^3 voxels at 1.5 mm of smooth random soft tissue (0..200 HU), LPS, off-centre origin."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 1, (64, 64, 64)).astype(np.float32)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 4.0))
    hu = 100 + 100 * smooth / np.abs(smooth).max()
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((1.5, 1.5, 1.5))
    image.SetOrigin((-20.0, 35.5, 110.25))
    path = tmp_path_factory.mktemp("bench") / "tissue.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def bench_result(tissue_ct, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("bench-out") / "bench.json"
    done = run_cli("bench", tissue_ct, "--classes", "3", "--feature-size", "6", "--window", "64",
                   "--json", out, "--overlap", "0.5", timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_every_field_is_reported(bench_result):
    result, stdout = bench_result
    assert result["schema"] == "coralbay-bench/2"
    for key in ("cpu", "logical_cores", "load_average_before", "load_average_after", "torch", "monai"):
        assert key in result["machine"]
    assert result["model"]["feature_size"] == 6 and result["model"]["structures"] == 3
    assert result["model"]["random_weights"] is True
    assert result["input"]["size"] == [64, 64, 64]
    for name in ("monai", "ours"):
        median = result["paths"][name]["median"]
        assert PATH_FIELDS <= set(median), PATH_FIELDS - set(median)
        assert set(median["stages_s"]) == set(STAGES)
        assert all(v >= 0 for v in median["stages_s"].values())
        assert median["total_s"] >= median["stages_s"]["inference"] > 0
        assert median["peak_rss_added_mb"] >= 0
        assert median["peak_gpu_added_mb"] is None and median["peak_gpu_added_mb_by_stage"] is None  # CPU
        by_stage = median["peak_rss_added_mb_by_stage"]
        assert set(by_stage) == set(STAGES)
        assert max(by_stage.values()) <= median["peak_rss_added_mb"] + 1.0  # each stage within the whole
        assert median["windows_evaluated"] == median["windows_total"] == 1
        assert median["model_grid_shape"] == [64, 64, 64]
        assert median["windows_per_s"] > 0 and median["achieved_flops_per_s"] > 0
        assert len(result["paths"][name]["runs"]) == 1
    # Same architecture, same window: the same model FLOPs (about 4.4 GFLOP at F=6, 64^3).
    flops = {result["paths"][n]["median"]["flops_per_window"] for n in ("monai", "ours")}
    assert len(flops) == 1 and 3e9 < flops.pop() < 6e9
    assert result["settings"]["window_batch"] == {"monai": 2, "ours": 2}  # the bundle's
    for key in ("time", "cpu_time", "inference_time", "memory"):
        assert result["ratios"][key] > 0
    assert result["ratios"]["gpu_memory"] is None
    assert set(result["ratios"]["memory_by_stage"]) == set(STAGES)
    assert result["paths"]["ours"]["ratios"] == result["ratios"]
    assert result["paths"]["monai"]["ratios"]["time"] == 1.0
    assert set(result["targets"]["met"]) == {"time", "memory", "dice"}
    assert result["targets"]["time_ratio_max"] == TARGETS["time_ratio_max"]
    assert "ours/monai" in stdout
    assert "back to the input grid: ours linear, monai probabilities" in stdout


def test_labels_agree_with_the_monai_path(bench_result):
    agreement = bench_result[0]["agreement"]
    assert agreement["bound"] == DICE_BOUND
    assert [s["name"] for s in agreement["structures"]] == ["label 1", "label 2", "label 3"]
    judged = [s for s in agreement["structures"] if s["judged"]]
    assert judged, "random weights still label something over 1 mL in 24 mL of tissue"
    assert all(s["baseline_ml"] > 1.0 for s in judged)
    assert agreement["holds"] and agreement["min_dice"] >= DICE_BOUND, agreement["structures"]
    assert agreement["voxels_equal_fraction"] > 0.99
    assert bench_result[0]["settings"]["baseline_invert"] == "probabilities"


@pytest.mark.parametrize("restore, baseline_invert", [("linear", "probabilities"), ("nearest", "labels")])
def test_labels_agree_when_the_model_grid_is_coarser(tissue_ct, tmp_path, restore, baseline_invert):
    """Model grid 2.5 mm, input 1.5 mm: both paths resample back, each pair the same way.

    Ours (linear probabilities, argmax) against MONAI's bundle recipe (softmax, Invertd bilinear,
    argmax), and ours with nearest labels against argmax + Invertd nearest. 2.5 / 1.5 = 5 / 3 puts
    no input voxel centre exactly half-way between two model voxels, so nearest has no ties.
    """
    from conftest import run_cli

    out = tmp_path / "bench.json"
    done = run_cli("bench", tissue_ct, "--classes", "3", "--feature-size", "6", "--window", "64",
                   "--spacing", "2.5", "--overlap", "0.5", "--restore", restore,
                   "--baseline-invert", baseline_invert, "--json", out, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["model"]["spacing_mm"] == [2.5, 2.5, 2.5]
    assert result["paths"]["monai"]["median"]["model_grid_shape"] == [39, 39, 39]
    assert result["settings"]["restore"] == restore and result["settings"]["baseline_invert"] == baseline_invert
    agreement = result["agreement"]
    assert [s for s in agreement["structures"] if s["judged"]], agreement["structures"]
    assert agreement["holds"] and agreement["min_dice"] >= DICE_BOUND, agreement["structures"]
    assert agreement["voxels_equal_fraction"] > 0.99


def test_bad_requests_fail_with_one_sentence(tissue_ct, tmp_path, cli):
    missing_input = cli("bench", "--classes", "2", "--json", tmp_path / "x.json")
    assert missing_input.returncode == 2 and "INPUT or --synthetic" in missing_input.stderr
    no_model = cli("bench", tissue_ct, "--json", tmp_path / "x.json")
    assert no_model.returncode == 2 and "--model" in no_model.stderr
    not_json = cli("bench", tissue_ct, "--classes", "2", "--json", tmp_path / "x.txt")
    assert not_json.returncode == 2 and ".json" in not_json.stderr
    bf16_cpu = cli("bench", tissue_ct, "--classes", "2", "--json", tmp_path / "x.json",
                   "--device", "cpu", "--precision", "bf16")
    assert bf16_cpu.returncode == 2 and "CUDA" in bf16_cpu.stderr
    assert not list(tmp_path.iterdir())


def test_gpu_check_without_cuda_says_so_in_one_sentence():
    """The GPU check starts on a machine without CUDA and stops cleanly (no traceback)."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the check would run for minutes")
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}  # the harness lives in benchmarks/, beside the engine
    done = subprocess.run([sys.executable, "-m", "coralbay_bench.gpu_check", "--out", "unused"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines == ["gpu_check: no CUDA GPU is visible to PyTorch, so there is nothing to measure here."]

"""Memory planning before a run, and the out-of-memory fallback during it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from coralbay.errors import CoralBayError
from coralbay.grid.windows import WindowSettings
from coralbay.inference.memory_plan import (GIB, estimate_segmentation, fallback_attempts, plan_window_batch,
                                run_with_memory_fallback)
from coralbay.inference.sliding_window import blend_slabs, sliding_window_logits
from coralbay.model import ArchitectureSpec, build_network


def estimate_for(batch):
    return estimate_segmentation((200, 200, 150), 512 * 512 * 100, 15, (96, 96, 96), 48, batch, 72_000_000)


def test_window_batch_is_lowered_to_fit_then_the_run_is_refused():
    four, one = estimate_for(4), estimate_for(1)
    assert four.host > one.host > 0
    batch, _ = plan_window_batch(estimate_for, 4, host_free=one.host + 1, device_free=None)
    assert batch == 1
    assert plan_window_batch(estimate_for, 4, host_free=100 * GIB, device_free=None)[0] == 4
    with pytest.raises(CoralBayError, match=r"needs about .* GiB of main memory but only 0.5 GiB"):
        plan_window_batch(estimate_for, 4, host_free=GIB // 2, device_free=None)
    with pytest.raises(CoralBayError, match="GiB of GPU memory"):
        plan_window_batch(estimate_for, 2, host_free=100 * GIB, device_free=GIB // 4)


def test_fallback_order_on_a_gpu():
    steps = [a.describe() for a in fallback_attempts(torch.device("cuda"), 4)]
    assert steps == ["a window batch of 4 on cuda", "a window batch of 2 on cuda", "a window batch of 1 on cuda",
                     "a window batch of 1 on cuda with stitching on cpu", "a window batch of 1 on cpu"]
    assert [a.window_batch for a in fallback_attempts(torch.device("cpu"), 3)] == [3, 1]


class OutOfMemoryAboveOneWindow(torch.nn.Module):
    """Fault injection: a real network that raises CUDA's out-of-memory error for batches > 1,
    as a GPU short of memory would (no GPU is needed to exercise the fallback)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)


def test_out_of_memory_retries_with_a_smaller_batch_and_says_so():
    torch.manual_seed(0)
    network = build_network(ArchitectureSpec("segmentation", feature_size=6, out_channels=3)).eval()
    volume = torch.rand(80, 64, 64)
    said = []

    def run(attempt):
        slabs = blend_slabs(volume, OutOfMemoryAboveOneWindow(network), 3,
                            WindowSettings((64, 64, 64), batch_size=attempt.window_batch, skip_empty=False),
                            device=attempt.device, stitch_device=attempt.stitch_device)
        return torch.cat([s.logits for s in slabs], dim=1)

    result, attempt = run_with_memory_fallback(run, torch.device("cpu"), 2, said.append)
    assert attempt.window_batch == 1
    assert said == ["Out of memory with a window batch of 2 on cpu; retrying with a window batch of 1 on cpu."]
    plain, _ = sliding_window_logits(volume, network, 3, WindowSettings((64, 64, 64), batch_size=1, skip_empty=False))
    assert float((result - plain).abs().max()) <= 1e-5


def test_segment_refuses_a_run_that_cannot_fit(tiny_seg_bundle, tmp_path, cli):
    image = sitk.GetImageFromArray(np.full((16, 16, 16), 40, np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    result = cli("segment", tmp_path / "ct.nii.gz", "-m", tiny_seg_bundle, "-o", tmp_path / "out.nii.gz",
                 env={"CORALBAY_MAX_MEMORY_GB": "0.05"})
    assert result.returncode == 1
    assert "needs about" in result.stderr and "GiB of main memory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_activation_plan_is_the_measured_table_and_lean_does_not_scale_with_the_batch():
    from coralbay.inference.memory_plan import MEASURED_WINDOW_MIB, window_activation_bytes

    for (feature_size, edge), (ours, monai) in MEASURED_WINDOW_MIB.items():
        assert window_activation_bytes(feature_size, (edge,) * 3) == int(ours * 2 ** 20)
        assert window_activation_bytes(feature_size, (edge,) * 3, lean=False) == int(monai * 2 ** 20)
        assert ours < monai  # the lean forward holds less than MONAI's for every measured width
    widths = [window_activation_bytes(f, (96, 96, 96)) for f in (8, 24, 32, 64, 128, 256)]
    assert all(0 < a < b for a, b in zip(widths, widths[1:]))  # between and beyond the table: grows with F

    def estimate(batch, lean):
        return estimate_segmentation((200, 200, 150), 10 ** 6, 15, (96, 96, 96), 48, batch, 72_000_000, lean)

    logits = 4 * 96 ** 3 * 16  # one window's input and 15 logits, float32
    assert estimate(4, True).activations - estimate(1, True).activations == 3 * logits
    assert estimate(4, False).activations - estimate(1, False).activations > 3 * window_activation_bytes(
        48, (96, 96, 96), lean=False)


def test_activation_table_matches_the_benchmark_files():
    """The table is the window_peak measurements kept in benchmarks/real (batch 1), not a guess."""
    import json
    from pathlib import Path

    from coralbay.inference.memory_plan import MEASURED_WINDOW_MIB

    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "real"
    names = {(6, 64): "F6-w64", (12, 64): "F12-w64", (48, 96): "U96B", (192, 96): "U96H"}
    for key, (ours, monai) in MEASURED_WINDOW_MIB.items():
        for path, value in (("ours", ours), ("monai", monai)):
            stem = f"window-{names[key]}-{path}" + ("-b1" if key[1] == 96 else "")
            measured = json.loads((folder / f"{stem}.json").read_text())
            assert measured["feature_size"] == key[0] and measured["window"] == key[1] and measured["batch"] == 1
            assert value == measured["peak_rss_added_mb"], stem

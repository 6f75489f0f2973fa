"""Our sliding-window loop against MONAI's `sliding_window_inference` on the same model and volume."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from coralbay.grid.windows import WindowSettings
from coralbay.inference.sliding_window import plan_windows, sliding_window_logits
from coralbay.model import ArchitectureSpec, build_network


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return build_network(ArchitectureSpec("segmentation", feature_size=6, out_channels=3)).eval()


# Two windows along x with blending; and a volume smaller than the window in z (padding path).
@pytest.mark.parametrize("shape,overlap", [((80, 64, 64), 0.5), ((64, 64, 50), 0.25)])
def test_equals_monai_sliding_window_inference(tiny_network, shape, overlap):
    torch.manual_seed(1)
    volume = torch.rand(shape)
    ours, stats = sliding_window_logits(volume, tiny_network, 3, WindowSettings((64, 64, 64), overlap=overlap,
                                                                                  batch_size=2, skip_empty=False))
    with torch.inference_mode():
        reference = sliding_window_inference(volume[None, None], (64, 64, 64), 2, tiny_network,
                                             overlap=overlap, mode="gaussian", sigma_scale=0.125)[0]
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) <= 1e-4
    assert stats["windows_evaluated"] == stats["windows_total"] == len(plan_windows(shape, (64,) * 3, overlap).slices)


@pytest.mark.parametrize("window", [16, 64, 96])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.625, 0.75, 0.9])
def test_window_placement_equals_monais(window, overlap):
    """Every axis length up to 3 windows: the same windows, in the same order, as MONAI's."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size in range(window, 3 * window + 2):
        shape = (size, window, size // 2 + window)
        interval = _get_scan_interval(shape, (window,) * 3, 3, (overlap,) * 3)
        theirs = [tuple((s.start, s.stop) for s in w) for w in dense_patch_slices(shape, (window,) * 3, interval)]
        ours = [tuple((s.start, s.stop) for s in w) for w in plan_windows(shape, (window,) * 3, overlap).slices]
        assert ours == theirs, (size, window, overlap)


def test_air_only_windows_are_skipped_and_become_background(tiny_network):
    volume = torch.zeros(64, 64, 128)
    volume[:, :, :20] = torch.rand(64, 64, 20)  # tissue only at one end: one window of three
    logits, stats = sliding_window_logits(volume, tiny_network, 3, WindowSettings((64, 64, 64), overlap=0.5))
    assert (stats["windows_evaluated"], stats["windows_total"]) == (1, 3)
    assert int(logits[:, :, :, -20:].argmax(0).max()) == 0  # far end: never evaluated, background


# Three windows along x (the last one shifted back to the edge), two along y, one along z: 6 windows
# per pass; the second case pads x and z and keeps a thin y band across two windows.
@pytest.mark.parametrize("shape,keep", [((100, 90, 64), ((10, 20, 5), (80, 61, 64))),
                                        ((50, 70, 40), ((0, 3, 0), (50, 9, 40)))])
def test_blending_only_a_kept_box_gives_the_same_values_there(tiny_network, shape, keep):
    """Segmentation blends only the box the restore reads; its values must not change."""
    from coralbay.inference.sliding_window import blend_slabs

    torch.manual_seed(1)
    volume = torch.rand(shape)
    full, _ = sliding_window_logits(volume, tiny_network, 3, WindowSettings((64, 64, 64), overlap=0.5, skip_empty=False))
    (x0, y0, z0), (x1, y1, z1) = keep
    seen = torch.zeros(shape[0], dtype=torch.bool)
    for slab in blend_slabs(volume, tiny_network, 3, WindowSettings((64, 64, 64), overlap=0.5, skip_empty=False), keep=keep):
        assert x0 <= slab.start < slab.stop <= x1 and slab.offset_yz == (y0, z0)
        assert tuple(slab.logits.shape[2:]) == (y1 - y0, z1 - z0)
        torch.testing.assert_close(slab.logits, full[:, slab.start:slab.stop, y0:y1, z0:z1], rtol=0, atol=1e-5)
        seen[slab.start:slab.stop] = True
    assert bool(seen[x0:x1].all()) and not bool(seen[:x0].any()) and not bool(seen[x1:].any())

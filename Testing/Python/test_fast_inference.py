"""The lean inference path gives MONAI's results: fast Swin forward, streamed slabs, 16-bit restore."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from coralbay.grid.boxes import IndexBox
from coralbay.grid.model_grid import model_grid
from coralbay.grid.windows import WindowSettings
from coralbay.inference.fast_swin import (disable_fast_swin, enable_fast_swin, fast_swin_enabled, mask_plan,
                                         window_tokens)
from coralbay.inference.restore import ProbabilityStore, restore_labels
from coralbay.inference.sliding_window import blend_slabs, sliding_window_logits
from coralbay.io.labels import LabelTable
from coralbay.model import ArchitectureSpec, build_network


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_network(ArchitectureSpec("segmentation", feature_size=6, out_channels=3)).eval()


@pytest.mark.parametrize("shape", [(2, 1, 32, 64, 64), (1, 1, 64, 32, 96)])
def test_fast_swin_equals_monai_forward(network, shape):
    torch.manual_seed(1)
    x = torch.rand(shape)
    disable_fast_swin(network)
    with torch.inference_mode():
        reference = network(x)
    assert enable_fast_swin(network) == 20  # 4 stages: 4 layers, 8 attention modules, 8 MLPs
    try:
        assert fast_swin_enabled(network)
        with torch.inference_mode():
            fast = network(x)
    finally:
        disable_fast_swin(network)
    assert not fast_swin_enabled(network)
    assert float((fast - reference).abs().max()) <= 1e-4 * float(reference.abs().max())


def test_cached_position_bias_follows_in_place_updates():
    """The relative position bias kept between forwards is rebuilt when training changes the table."""
    torch.manual_seed(2)
    net = build_network(ArchitectureSpec("segmentation", feature_size=6, out_channels=2)).eval()
    x = torch.rand(1, 1, 64, 64, 64)
    enable_fast_swin(net)
    try:
        with torch.inference_mode():
            net(x)  # fills the cache
        with torch.no_grad():
            for module in net.modules():
                if hasattr(module, "relative_position_bias_table"):
                    module.relative_position_bias_table.add_(torch.randn_like(module.relative_position_bias_table))
        with torch.inference_mode():
            fast = net(x)
    finally:
        disable_fast_swin(net)
    with torch.inference_mode():
        reference = net(x)
    assert float((fast - reference).abs().max()) <= 1e-4 * float(reference.abs().max())


def test_shifted_window_mask_has_few_patterns():
    plan = mask_plan((35, 35, 35), (7, 7, 7), (3, 3, 3))
    assert plan.per_item == 125 and len(plan.patterns) == 8
    assert sorted(len(w) for w in plan.windows) == [1, 4, 4, 4, 16, 16, 16, 64]
    assert all(set(torch.unique(p).tolist()) <= {0.0, -100.0} for p in plan.patterns)


@pytest.mark.parametrize("dims, shift", [((10, 9, 15), (3, 3, 3)), ((14, 7, 7), (0, 0, 0)), ((8, 12, 7), (3, 3, 3))])
def test_window_tokens_are_monais_pad_roll_and_partition(dims, shift):
    """One gather by `window_tokens` reads exactly what MONAI's pad + roll + window_partition
    give, padding tokens included (the zero row), for every item of a batch."""
    from monai.networks.nets.swin_unetr import get_window_size, window_partition

    batch, channels = 2, 3
    x = torch.randn(batch, *dims, channels)
    window, shift = get_window_size(dims, (7, 7, 7), shift)
    pads = [(w - s % w) % w for s, w in zip(dims, window)]
    padded = torch.nn.functional.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    rolled = torch.roll(padded, shifts=tuple(-s for s in shift), dims=(1, 2, 3)) if any(shift) else padded
    reference = window_partition(rolled, window)
    layout = window_tokens(dims, tuple(window), tuple(shift), batch)
    source = torch.cat([x.reshape(-1, channels), torch.zeros(1, channels)])
    assert layout.padded == any(pads)
    assert torch.equal(source[layout.tokens], reference)
    real = layout.tokens[layout.tokens < batch * x[0, ..., 0].numel()]
    assert torch.equal(real.sort().values, torch.arange(x[..., 0].numel()))  # every voxel written back once


def test_autograd_falls_back_to_monai(network):
    layer = network.encoder.swinViT.layers1[0]  # a BasicLayer: shifted and unshifted blocks
    x = torch.rand(1, 6, 16, 16, 16)
    with torch.no_grad():
        reference = layer(x)
    enable_fast_swin(network)
    try:
        with torch.no_grad():
            assert torch.allclose(layer(x), reference, atol=1e-5)
        x.requires_grad_(True)
        layer(x).sum().backward()  # with autograd on, MONAI's own (differentiable) forward runs
        assert x.grad is not None
    finally:
        disable_fast_swin(network)


def test_slabs_cover_the_volume_once_and_match_the_whole():
    torch.manual_seed(2)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    volume = torch.rand(70, 20, 18)
    whole, _ = sliding_window_logits(volume, net, 2, WindowSettings((16, 16, 16), overlap=0.5, skip_empty=False))
    seen = torch.zeros(70, dtype=torch.int32)
    stats: dict = {}
    for slab in blend_slabs(volume, net, 2, WindowSettings((16, 16, 16), overlap=0.5, skip_empty=False), stats=stats):
        seen[slab.start:slab.stop] += 1
        assert torch.equal(slab.logits, whole[:, slab.start:slab.stop])
    assert bool((seen == 1).all())
    assert stats["windows_total"] == stats["windows_evaluated"]


def test_chunked_restore_equals_whole_grid_resampling():
    """Restoring chunk by chunk from the 16-bit store gives the labels of float32 resampling."""
    image = sitk.Image([50, 40, 12], sitk.sitkInt16)
    image.SetSpacing((0.7, 0.7, 4.0))
    image.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))  # coronal-ish axis order
    box = IndexBox((3, 2, 1), (47, 38, 12))
    grid = model_grid(image, box, (1.5, 1.5, 1.5))
    rng = np.random.default_rng(0)
    shape = grid.GetSize()
    smooth = [sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=shape[::-1]).astype(np.float32)), 2.0)) for _ in range(3)]
    probs = torch.softmax(torch.from_numpy(np.stack(smooth).transpose(0, 3, 2, 1).copy()) * 20, dim=0)
    table = LabelTable.generic([1, 2])
    store = ProbabilityStore(3, shape, grid, np.uint16)
    store.put_probabilities(0, shape[0], probs)
    whole, _ = restore_labels(store, image, box, table, table, False)
    chunked, maps = restore_labels(store, image, box, table, table, True, chunk_voxels=2000)
    a, b = sitk.GetArrayFromImage(whole), sitk.GetArrayFromImage(chunked)
    assert np.array_equal(a, b) and set(np.unique(a)) == {0, 1, 2}
    assert chunked.GetSize() == image.GetSize() and chunked.GetDirection() == image.GetDirection()
    # the reference: each class resampled in float32 over the whole grid, then the argmax
    target = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    target.CopyInformation(image)
    moved = []
    for c in range(3):
        arr = sitk.GetImageFromArray(probs[c].numpy().transpose(2, 1, 0).copy())
        arr.CopyInformation(grid)
        moved.append(sitk.GetArrayFromImage(sitk.Resample(arr, target, sitk.Transform(), sitk.sitkLinear,
                                                          1.0 if c == 0 else 0.0, sitk.sitkFloat32)))
    reference = np.argmax(np.stack(moved), axis=0)
    inside = np.zeros_like(reference, dtype=bool)
    inside[box.lower[2]:box.upper[2], box.lower[1]:box.upper[1], box.lower[0]:box.upper[0]] = True
    assert np.mean(reference[inside] == a[inside]) > 0.999
    assert not a[~inside].any()
    assert set(maps) == {"label 1", "label 2"}
    assert np.allclose(sitk.GetArrayFromImage(maps["label 1"])[inside], moved[1][inside], atol=1e-4)


def test_input_voxels_half_a_model_voxel_beyond_the_grid_take_its_edge_values():
    """67 slices at 3 mm span 198 mm; the 4 mm model grid has round(198 / 4 + 1) = 50 planes,
    whose last centre lies 2 mm (exactly half a model voxel) before the last slice. That slice
    takes the edge plane's labels (MONAI's border padding), not background."""
    image = sitk.Image([12, 10, 67], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.8, 3.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, -1))
    box = IndexBox((0, 0, 0), tuple(image.GetSize()))
    grid = model_grid(image, box, (4.0, 4.0, 4.0))
    assert grid.GetSize()[2] == 50
    shape = grid.GetSize()
    probs = torch.zeros((3, *shape))
    probs[1] = 1.0  # structure 1 everywhere
    table = LabelTable.generic([1, 2])
    for method in ("linear", "nearest"):
        store = ProbabilityStore(3, shape, grid, np.uint16)
        store.put_probabilities(0, shape[0], probs)
        labels, maps = restore_labels(store, image, box, table, table, True, method=method)
        array = sitk.GetArrayFromImage(labels)
        assert bool((array == 1).all()), (method, np.argwhere(array != 1)[:3])
        assert float(sitk.GetArrayFromImage(maps["label 1"]).min()) == pytest.approx(1.0)


def test_cli_lets_idle_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    """`coralbay` sets OMP_WAIT_POLICY=PASSIVE before any command imports torch; a user's value wins."""
    from coralbay import cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["models"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["models"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"

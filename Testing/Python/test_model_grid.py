"""The model grid: a piece of the grid MONAI's Orientation("RAS") + Spacing give for the whole
scan, grown to whole sliding windows, so that body cropping does not change what the network sees."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.grid.boxes import IndexBox
from coralbay.grid.model_grid import model_grid, reference_lattice, window_span
from coralbay.inference.preprocess import prepare

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_scan(size=(45, 38, 21), spacing=(0.8, 0.9, 2.5), origin=(12.3, -40.1, 7.7),
             direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(0, 300, size=size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection([float(v) for v in direction])
    return image


def monai_grid(image: sitk.Image, path, spacing) -> tuple[np.ndarray, tuple[int, ...]]:
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing

    sitk.WriteImage(image, str(path))
    data = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"),
                    Spacing(pixdim=spacing, mode="bilinear")])(str(path))
    return np.asarray(data.affine)[:3, 3], tuple(int(v) for v in data.shape[1:])


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, -1, 0, 0, 0, -1)])
@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (4.0, 4.0, 4.0), (0.7, 1.1, 2.0)])
def test_reference_lattice_is_monai_spacing_grid(tmp_path, direction, spacing):
    image = lps_scan(direction=direction)
    origin, size = reference_lattice(image, spacing)
    monai_origin, monai_size = monai_grid(image, tmp_path / "scan.nii.gz", spacing)
    assert tuple(int(v) for v in size) == monai_size
    np.testing.assert_allclose(origin, monai_origin, atol=1e-4)


def test_cropped_grid_samples_the_whole_grid():
    image = lps_scan(size=(90, 80, 40), spacing=(0.7, 0.7, 2.0))
    spacing = (1.5, 1.5, 1.5)
    full = model_grid(image, IndexBox((0, 0, 0), image.GetSize()), spacing)
    assert full.GetSize() == tuple(int(v) for v in reference_lattice(image, spacing)[1])
    crop = model_grid(image, IndexBox((13, 7, 5), (71, 66, 33)), spacing)
    offset = np.asarray(full.TransformPhysicalPointToContinuousIndex(crop.GetOrigin()))
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-6)  # on the same lattice
    assert all(c < f for c, f in zip(crop.GetSize(), full.GetSize()))
    # The box's extent is covered, to within half a model voxel.
    for corner in (np.array([13, 7, 5]) - 0.5, np.array([71, 66, 33]) - 0.5):
        index = np.asarray(crop.TransformPhysicalPointToContinuousIndex(image.TransformContinuousIndexToPhysicalPoint(corner)))
        assert np.all(index >= -0.5 - 1e-6) and np.all(index <= np.asarray(crop.GetSize()) - 0.5 + 1e-6)
    # Intensities on the shared voxels are the same samples.
    pre = {"crop_foreground": False, "antialias": False, "spacing_mm": list(spacing), "intensity_window_hu": [-1000, 1000]}
    whole = prepare(image, pre).array
    lower_lps = image.TransformContinuousIndexToPhysicalPoint([13, 7, 5])
    upper_lps = image.TransformContinuousIndexToPhysicalPoint([70, 65, 32])
    part = prepare(image, pre, roi_lps=[*lower_lps, *upper_lps])
    k = np.round(np.asarray(full.TransformPhysicalPointToContinuousIndex(part.grid.GetOrigin()))).astype(int)
    inner = tuple(slice(1, s - 1) for s in part.array.shape)  # away from the crop's interpolation edge
    expected = whole[k[0]:k[0] + part.array.shape[0], k[1]:k[1] + part.array.shape[1], k[2]:k[2] + part.array.shape[2]]
    np.testing.assert_allclose(part.array[inner], expected[inner], atol=1e-5)


def monai_starts(size: int, window: int, overlap: float) -> list[int]:
    from monai.data.utils import dense_patch_slices

    interval = max(int(window * (1 - overlap)), 1) if size > window else window
    return sorted({s[0].start for s in dense_patch_slices((size, window, window), (window, window, window),
                                                          (interval, window, window))})


@pytest.mark.parametrize("size,window,overlap", [(200, 64, 0.5), (131, 64, 0.25), (97, 96, 0.75), (60, 64, 0.5)])
def test_window_span_holds_exactly_the_whole_grid_windows_it_touches(size, window, overlap):
    from coralbay.inference.sliding_window import plan_windows

    whole = monai_starts(size, window, overlap)
    for lower, upper in [(0, size), (10, 40), (size // 3, size // 3 + 5), (size - 7, size)]:
        a, b = window_span(lower, upper, size, window, overlap)
        assert a <= lower and upper <= b
        touching = [t for t in whole if t < upper and t + window > lower]
        if size <= window:
            assert (a, b) == (0, size)
            continue
        ours = sorted({s[0].start + a for s in plan_windows((b - a, window, window), (window,) * 3, overlap).slices})
        assert ours == touching


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (4.0, 4.0, 4.0)])
def test_prepared_intensities_are_monai_spacing_samples_up_to_the_edges(tmp_path, spacing):
    """Without anti-aliasing the model-grid input is MONAI's, including the last model voxels that
    lie beyond the scan's last voxel centre (MONAI repeats the edge there; air would be wrong)."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing

    image = lps_scan(size=(90, 80, 40), spacing=(0.7, 0.7, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))
    expected = np.asarray(Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"),
                                   Spacing(pixdim=spacing, mode="bilinear")])(str(path))[0])
    lo, hi = -4000.0, 4000.0
    pre = {"crop_foreground": False, "antialias": False, "spacing_mm": list(spacing), "intensity_window_hu": [lo, hi]}
    ours = prepare(image, pre).array * (hi - lo) + lo
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=0.05)

"""overview.png: three orthogonal slices through the largest error, for a glance at where the
prediction fails. Each panel shows the CT (when given; soft-tissue window), the reference
contours (white), the predicted contours (magenta), the disagreement overlaid (false positive
red, false negative blue, label mismatch yellow) and a cyan cross on the largest error. Slices
are shown as radiologists read them: axial and coronal with the patient's right on the left of
the image, superior up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.review.diffmaps import DIFFERENCE_TABLE, FALSE_NEGATIVE, FALSE_POSITIVE, MISMATCH

WINDOW_HU = (-160.0, 240.0)  # level 40, width 400: soft tissue
REFERENCE_COLOUR = "white"
PREDICTION_COLOUR = "#ff30ff"
FOCUS_COLOUR = "cyan"


def _to_lps(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return sitk.DICOMOrient(image, "LPS")


def _panels(shape: tuple[int, int, int], spacing: tuple[float, float, float], focus: tuple[int, int, int]):
    """(title, slicer, extent, origin) per view for an LPS-oriented array (z, y, x)."""
    (nz, ny, nx), (sx, sy, sz), (k, j, i) = shape, spacing, focus
    return [
        ("axial", lambda a: a[k], [0, nx * sx, ny * sy, 0], "upper"),
        ("coronal", lambda a: a[:, j, :], [0, nx * sx, 0, nz * sz], "lower"),
        ("sagittal", lambda a: a[:, :, i], [0, ny * sy, 0, nz * sz], "lower"),
    ]


def _zoom_limits(foreground: np.ndarray, spacing: tuple[float, float, float], margin_mm: float = 15.0,
                 least_mm: float = 100.0):
    """Panel limits (mm) around the labelled region, so small structures are not lost in the field
    of view, yet at least `least_mm` wide (where the image allows) to keep some anatomy around them.

    Returns {view: (xlim, ylim)} for the LPS-oriented arrays (z, y, x); y limits follow each view's
    display origin (rows downwards for axial, upwards for coronal and sagittal).
    """
    where = np.argwhere(foreground)
    (k0, j0, i0), (k1, j1, i1) = where.min(axis=0), where.max(axis=0) + 1
    (nz, ny, nx), (sx, sy, sz) = foreground.shape, spacing

    def span(lo: int, hi: int, n: int, step: float) -> tuple[float, float]:
        pad = max(margin_mm, (least_mm - (hi - lo) * step) / 2)
        return max(0.0, lo * step - pad), min(n * step, hi * step + pad)

    x, y, z = span(i0, i1, nx, sx), span(j0, j1, ny, sy), span(k0, k1, nz, sz)
    return {"axial": (x, y[::-1]), "coronal": (x, z), "sagittal": (y, z)}


def _contours(ax, labels: np.ndarray, extent, colour: str) -> None:
    """Draw one contour per structure (contourpy on each structure's bounding box, one line collection).

    In both display origins row r of the slice is drawn at (r + 0.5) x row spacing in the panel's
    millimetre coordinates, column c at (c + 0.5) x column spacing.
    """
    from contourpy import LineType, contour_generator
    from matplotlib.collections import LineCollection
    from scipy import ndimage

    rows, cols = labels.shape
    dx = (extent[1] - extent[0]) / cols
    dy = abs(extent[3] - extent[2]) / rows
    lines = []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        r0, r1 = max(0, box[0].start - 1), min(rows, box[0].stop + 1)
        c0, c1 = max(0, box[1].start - 1), min(cols, box[1].stop + 1)
        mask = (labels[r0:r1, c0:c1] == index + 1).astype(np.float64)
        if min(mask.shape) < 2:
            continue
        generator = contour_generator((np.arange(c0, c1) + 0.5) * dx, (np.arange(r0, r1) + 0.5) * dy, mask,
                                      line_type=LineType.Separate)
        lines.extend(generator.lines(0.5))
    if lines:
        ax.add_collection(LineCollection(lines, colors=colour, linewidths=0.8))


def write_overview(path: Path, grid: sitk.Image, prediction: np.ndarray, reference: np.ndarray,
                   difference: np.ndarray, focus_index: tuple[int, int, int] | None,
                   ct: sitk.Image | None, title: str) -> None:
    """Render the overview PNG (arrays are on `grid`, indexed z, y, x)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pred = sitk.GetArrayFromImage(_to_lps(prediction, grid))
    ref = sitk.GetArrayFromImage(_to_lps(reference, grid))
    diff_image = _to_lps(difference, grid)
    diff = sitk.GetArrayFromImage(diff_image)
    if focus_index is None:  # perfect agreement: look at the middle of the reference
        where = np.argwhere(ref > 0)
        focus = tuple(int(v) for v in (where.mean(axis=0) if where.size else np.array(ref.shape) // 2))
    else:
        point = grid.TransformIndexToPhysicalPoint((focus_index[2], focus_index[1], focus_index[0]))
        i, j, k = diff_image.TransformPhysicalPointToIndex(point)
        focus = (k, j, i)
    ct_array = None
    if ct is not None:
        on_grid = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, float(WINDOW_HU[0]), sitk.sitkFloat32)
        ct_array = sitk.GetArrayFromImage(sitk.DICOMOrient(on_grid, "LPS"))

    colours = ["none"] * 5
    for value in (FALSE_POSITIVE, FALSE_NEGATIVE, MISMATCH):
        colours[value] = tuple(c / 255 for c in DIFFERENCE_TABLE.by_value(value).color)
    error_cmap = ListedColormap([(0, 0, 0, 0), (0, 0, 0, 0)] + [c + (0.55,) for c in colours[2:]])

    (sx, sy, sz), (k, j, i) = diff_image.GetSpacing(), focus
    marker = {"axial": ((i + 0.5) * sx, (j + 0.5) * sy), "coronal": ((i + 0.5) * sx, (k + 0.5) * sz),
              "sagittal": ((j + 0.5) * sy, (k + 0.5) * sz)}
    zoom = _zoom_limits((pred > 0) | (ref > 0), diff_image.GetSpacing())
    figure = Figure(figsize=(15, 5.8), dpi=100, facecolor="black")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for ax, (name, cut, extent, origin) in zip(axes, _panels(pred.shape, diff_image.GetSpacing(), focus)):
        ax.set_facecolor("black")
        if ct_array is not None:
            ax.imshow(cut(ct_array), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], extent=extent,
                      origin=origin, interpolation="bilinear")
        else:
            ax.imshow(np.zeros_like(cut(diff), dtype=float), cmap="gray", vmin=0, vmax=1, extent=extent, origin=origin)
        ax.imshow(cut(diff), cmap=error_cmap, vmin=-0.5, vmax=4.5, extent=extent, origin=origin,
                  interpolation="nearest")
        _contours(ax, cut(ref), extent, REFERENCE_COLOUR)
        _contours(ax, cut(pred), extent, PREDICTION_COLOUR)
        if focus_index is not None:  # mark the largest error
            ax.plot(*marker[name], marker="+", markersize=16, markeredgewidth=1.5, color=FOCUS_COLOUR)
        xlim, ylim = zoom[name]
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_title(name, color="white")
        ax.set_xticks([])
        ax.set_yticks([])
    legend = [Patch(facecolor="none", edgecolor=REFERENCE_COLOUR, label="reference"),
              Patch(facecolor="none", edgecolor=PREDICTION_COLOUR, label="prediction")]
    legend += [Patch(facecolor=colours[v], label=DIFFERENCE_TABLE.name_of(v))
               for v in (FALSE_POSITIVE, FALSE_NEGATIVE, MISMATCH)]
    figure.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.1, wspace=0.04)
    figure.legend(handles=legend, loc="lower center", ncol=5, frameon=False, labelcolor="white")
    figure.suptitle(title, color="white")
    figure.savefig(path, facecolor="black")

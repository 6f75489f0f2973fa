"""Surface distances of one structure, in millimetres with the true (anisotropic) voxel spacing.

Definitions (the same as MONAI's `compute_hausdorff_distance`, `compute_average_surface_distance`
(symmetric) and `compute_surface_dice` (use_subvoxels=False), so results can be checked against it):
- The surface of a mask is its set of boundary voxels: voxels of the mask with at least one of
  their 6 face neighbours outside it; the outside of the image counts as outside the mask.
- The distance of a boundary voxel to the other surface is the Euclidean distance between voxel
  centres, in mm, to the nearest boundary voxel of the other mask.
- d(P->R): distances of every predicted boundary voxel to the reference surface; d(R->P) likewise.
- Hausdorff = max(max d(P->R), max d(R->P)).
- HD95 = max(95th percentile of d(P->R), 95th percentile of d(R->P)), linear interpolation.
- ASSD = mean of all distances of d(P->R) and d(R->P) together.
- Surface Dice at tolerance t = (#d(P->R) <= t + #d(R->P) <= t) / (#P boundary + #R boundary).
Empty cases: one mask empty -> Hausdorff, HD95 and ASSD None (no surface to measure to),
surface Dice 0; both empty -> all None.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask (6-connectivity; the image exterior counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=FACE_NEIGHBOURS, border_value=0)


def distances_to_surface(from_surface: np.ndarray, to_surface: np.ndarray,
                         spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance in mm from each voxel of `from_surface` to the nearest voxel of `to_surface`.

    Exact nearest-neighbour search among boundary voxel centres (a k-d tree): surfaces are sparse,
    so this is an order of magnitude faster than a distance transform of the whole bounding box.
    Spacing scales index axes; the direction matrix is a rotation and does not change distances.
    """
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    targets = np.argwhere(to_surface) * scale
    queries = np.argwhere(from_surface) * scale
    return cKDTree(targets).query(queries, k=1)[0]


def surface_metrics(prediction: np.ndarray, reference: np.ndarray,
                    spacing: tuple[float, float, float], tolerance_mm: float) -> dict:
    """Hausdorff, HD95, ASSD and surface Dice of two boolean masks (spacing in array axis order).

    The masks may be a crop of the full image that holds both masks with a margin of one voxel
    (or reaches the image border): surfaces and nearest distances are then those of the full image.
    """
    result = {"hausdorff_mm": None, "hd95_mm": None, "assd_mm": None, "surface_dice": None}
    has_pred, has_ref = bool(prediction.any()), bool(reference.any())
    if not (has_pred or has_ref):
        return result
    if not (has_pred and has_ref):
        result["surface_dice"] = 0.0
        return result
    pred_surface = surface_voxels(prediction)
    ref_surface = surface_voxels(reference)
    d_pr = distances_to_surface(pred_surface, ref_surface, spacing)
    d_rp = distances_to_surface(ref_surface, pred_surface, spacing)
    both = np.concatenate([d_pr, d_rp])
    result["hausdorff_mm"] = float(both.max())
    result["hd95_mm"] = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    result["assd_mm"] = float(both.mean())
    result["surface_dice"] = float((np.count_nonzero(d_pr <= tolerance_mm)
                                    + np.count_nonzero(d_rp <= tolerance_mm)) / both.size)
    return result

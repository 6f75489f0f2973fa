"""Difference maps on the prediction's grid: categories of (dis)agreement and signed distances.

Categorical map (values and colours in DIFFERENCE_TABLE):
    0 background in both, 1 agreement (same structure), 2 false positive (prediction labels a
    voxel the reference leaves as background), 3 false negative (the reverse), 4 label mismatch
    (both label the voxel, as different structures; unmatched labels always count as different).

Signed surface-distance map (float32, mm): 0 wherever the two maps agree (background included).
Where they disagree, the sign says whether the voxel lies inside (-) or outside (+) the reference
foreground, and the magnitude is its distance, between voxel centres, to the boundary of the
reference structure concerned:
  - inside a reference structure (false negatives and label mismatches): minus the distance to the
    nearest voxel outside that reference structure;
  - outside every reference structure (false positives): the distance to the nearest voxel of the
    reference structure paired with the predicted label, or, when that structure is unpaired or
    absent, to the nearest reference voxel of any structure.
So no disagreeing voxel is 0: the smallest magnitude is the smallest voxel spacing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from coralbay.io.labels import Label, LabelTable

AGREEMENT, FALSE_POSITIVE, FALSE_NEGATIVE, MISMATCH = 1, 2, 3, 4

DIFFERENCE_TABLE = LabelTable([
    Label(AGREEMENT, "agreement", (90, 200, 90)),
    Label(FALSE_POSITIVE, "false positive", (230, 40, 40)),
    Label(FALSE_NEGATIVE, "false negative", (40, 110, 240)),
    Label(MISMATCH, "label mismatch", (250, 200, 0)),
])

Box = tuple[slice, slice, slice]


def reference_in_prediction_values(reference: np.ndarray, ref_to_pred: dict[int, int]) -> np.ndarray:
    """The reference relabelled with the paired prediction values; unpaired labels become -value.

    Negative values can never equal a prediction label, so unpaired structures always disagree.
    """
    top = int(reference.max()) if reference.size else 0
    lut = -np.arange(top + 1, dtype=np.int32)
    for ref_value, pred_value in ref_to_pred.items():
        if ref_value <= top:
            lut[ref_value] = pred_value
    return lut[reference]


def difference_labels(prediction: np.ndarray, reference_mapped: np.ndarray) -> np.ndarray:
    """The categorical difference map (uint8, values above)."""
    pred_fg, ref_fg = prediction > 0, reference_mapped != 0
    out = np.zeros(prediction.shape, dtype=np.uint8)
    same = prediction == reference_mapped
    out[pred_fg & same] = AGREEMENT
    out[pred_fg & ~ref_fg] = FALSE_POSITIVE
    out[~pred_fg & ref_fg] = FALSE_NEGATIVE
    out[pred_fg & ref_fg & ~same] = MISMATCH
    return out


def union_box(boxes: list[Box | None], shape: tuple[int, ...], margin: int = 1) -> Box:
    """The smallest box holding all `boxes`, grown by `margin` voxels and clipped to the image."""
    present = [b for b in boxes if b is not None]
    return tuple(slice(max(0, min(b[d].start for b in present) - margin),
                       min(shape[d], max(b[d].stop for b in present) + margin))
                 for d in range(len(shape)))  # type: ignore[return-value]


def bounding_boxes(labels: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label value present."""
    return {i + 1: box for i, box in enumerate(ndimage.find_objects(labels)) if box is not None}


def signed_distance_map(prediction: np.ndarray, reference: np.ndarray, reference_mapped: np.ndarray,
                        pred_to_ref: dict[int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """The signed surface-distance map (see the module docstring); spacing in array axis order."""
    out = np.zeros(prediction.shape, dtype=np.float32)
    ref_boxes = bounding_boxes(reference)
    pred_boxes = bounding_boxes(prediction)

    inside_errors = (reference != 0) & (prediction != reference_mapped)
    for ref_value in np.unique(reference[inside_errors]):
        box = union_box([ref_boxes[int(ref_value)]], reference.shape, margin=0)
        structure = reference[box] == ref_value
        # Zero padding: the image exterior counts as outside the structure.
        depth = ndimage.distance_transform_edt(np.pad(structure, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        selected = inside_errors[box] & structure
        out[box][selected] = -depth[selected]

    false_positives = (prediction != 0) & (reference_mapped == 0)
    anywhere: np.ndarray | None = None
    for pred_value in np.unique(prediction[false_positives]):
        ref_value = pred_to_ref.get(int(pred_value))
        if ref_value is not None and ref_value in ref_boxes:
            box = union_box([pred_boxes[int(pred_value)], ref_boxes[ref_value]], prediction.shape, margin=0)
            distance = ndimage.distance_transform_edt(reference[box] != ref_value, sampling=spacing)
            selected = false_positives[box] & (prediction[box] == pred_value)
            out[box][selected] = distance[selected]
        else:
            if anywhere is None:
                anywhere = ndimage.distance_transform_edt(reference == 0, sampling=spacing)
            selected = false_positives & (prediction == pred_value)
            out[selected] = anywhere[selected]
    return out


def largest_error_region(difference: np.ndarray) -> tuple[int, int, int] | None:
    """Array index (z, y, x) of the voxel nearest the centroid of the largest connected error
    region (false positives, false negatives and mismatches together, 26-connected); None if
    the maps agree everywhere. A voxel of the region, not the bare centroid, so slices through
    it always show the error even when the region is curved."""
    errors = difference >= FALSE_POSITIVE
    if not errors.any():
        return None
    components, count = ndimage.label(errors, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    voxels = np.argwhere(components == largest)
    centroid = voxels.mean(axis=0)
    nearest = voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))]
    return int(nearest[0]), int(nearest[1]), int(nearest[2])

"""The interactive session's segments in the output segmentation: the preview of the structure in
progress, the accepted structures, and those restored from an earlier session.

Why apart from the session logic: these are the only places the session's answers touch the scene;
accepted segments are never touched again, and each kind carries the same tags (value, state).
"""

from __future__ import annotations

import numpy as np

import slicer
from CoralBaySlicerScene.files_to_nodes import describeSegment, labelMapArray

PREVIEW_SUFFIX = " (preview)"
STATE_TAG = "CoralBay.Interactive"  # segment tag: "preview" or "accepted"


def showPreview(state, maskFile) -> None:
    """The answer's mask as the preview segment, replaced in place (same segment ID)."""
    array = labelMapArray(maskFile) > 0
    segmentation = state.segmentation.GetSegmentation()
    if not state.previewId or not segmentation.GetSegment(state.previewId):
        state.previewId = segmentation.AddEmptySegment("", f"{state.structure}{PREVIEW_SUFFIX}", state.color)
        segmentation.GetSegment(state.previewId).SetTag(STATE_TAG, "preview")
    slicer.util.updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), state.segmentation, state.previewId,
                                                     state.volume)


def removePreview(state) -> None:
    """The preview goes (a structure left unaccepted, End session); accepted segments never do."""
    segmentation = state.segmentation.GetSegmentation()
    if state.previewId and segmentation.GetSegment(state.previewId):
        segmentation.RemoveSegment(state.previewId)
    state.previewId = None


def acceptPreview(state, name: str, value: int) -> None:
    segment = state.segmentation.GetSegmentation().GetSegment(state.previewId) if state.previewId else None
    if segment is not None:
        describeSegment(segment, name, state.color, value, state.terminology)
        segment.SetTag(STATE_TAG, "accepted")
    state.previewId, state.structure = None, None


def missingAccepted(state, accepted: dict) -> dict:
    """Structures the engine restored as accepted ({name: value}) that the output segmentation lacks."""
    segmentation = state.segmentation.GetSegmentation()
    return {str(n): int(v) for n, v in accepted.items() if not segmentation.GetSegmentIdBySegmentName(str(n))}


def importRestored(state, labelsFile, missing: dict, appearance) -> list:
    """The restored structures as accepted segments (`appearance(name, index)` gives colour and
    terminology, value tag); returns the names added."""
    array = labelMapArray(labelsFile)
    segmentation = state.segmentation.GetSegmentation()
    added = []
    for name, value in sorted(missing.items(), key=lambda item: item[1]):
        if segmentation.GetSegmentIdBySegmentName(name):
            continue
        color, entry = appearance(name, segmentation.GetNumberOfSegments())
        segmentId = segmentation.AddEmptySegment("", name, color)
        segment = segmentation.GetSegment(segmentId)
        describeSegment(segment, name, color, value, entry)
        segment.SetTag(STATE_TAG, "accepted")
        slicer.util.updateSegmentBinaryLabelmapFromArray((array == value).astype(np.uint8), state.segmentation,
                                                         segmentId, state.volume)
        added.append(name)
    return added

"""Scene nodes written for the engine, and the checks made before anything starts.

Why here and not in the Logic: every workflow (segment, compare, export, the interactive session)
hands the engine files; writing them the same way everywhere keeps one rule for the node's own
storage (never changed), segment label values (kept as the engine gave them), terminology codes
(only the ones somebody chose) and coordinates (Slicer's RAS converted once to the engine's LPS).
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Optional

import numpy as np
import vtk

import slicer
from CoralBaySlicerLib import coordinates, results, segments
from CoralBaySlicerScene.scene_guard import sceneUnchanged

# -- checks of the inputs (before anything starts) -------------------------------------------------


def checkInputVolume(volume) -> None:
    if volume is None:
        raise ValueError("Select an input volume.")
    if volume.GetImageData() is None:
        raise ValueError(f"The volume {volume.GetName()} has no image data.")


def volumeBoxLPS(volume):
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    return coordinates.ras_bounds_to_lps_box(bounds)


def roiBoxLPS(roiNode, volume):
    """The ROI's box in LPS (lower x, y, z, upper x, y, z); refused when it misses the volume."""
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    box = coordinates.ras_bounds_to_lps_box(bounds)
    if not coordinates.boxes_overlap(box, volumeBoxLPS(volume)):
        raise ValueError(f"The region {roiNode.GetName()} lies outside the volume {volume.GetName()}.")
    return box


def controlPointLPS(markupsNode, index: int, volume):
    """Control point `index` in LPS; refused in one sentence when it lies outside the volume."""
    ras = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, ras)
    lps = coordinates.ras_to_lps(ras)
    box = volumeBoxLPS(volume)
    if not all(box[i] <= lps[i] <= box[i + 3] for i in range(3)):
        raise ValueError(f"The point {markupsNode.GetNthControlPointLabel(index)} lies outside the volume "
                         f"{volume.GetName()}.")
    return lps


def pointLPS(pointNode, volume):
    """The point list's first point in LPS (Classify looks around it)."""
    if pointNode.GetNumberOfControlPoints() < 1:
        raise ValueError(f"The point list {pointNode.GetName()} has no points.")
    return controlPointLPS(pointNode, 0, volume)


def referenceVolume(segmentation):
    volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    if volume is None:
        raise ValueError(f"The segmentation {segmentation.GetName()} has no reference volume; select the input volume.")
    return volume


# -- volumes ---------------------------------------------------------------------------------------


def writeVolume(volume, path) -> None:
    """Write a volume (or label map) node to `path` without changing the node's own storage."""
    with sceneUnchanged():
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        storage.UseCompressionOff()
        if not storage.WriteData(volume):
            raise ValueError(f"The volume {volume.GetName()} could not be written for the engine.")


def writeMaskOnVolume(mask_zyx: np.ndarray, volume, path, name: str = "CoralBay mask") -> None:
    """A (z, y, x) array as a label map on `volume`'s grid (strokes, segments to refine)."""
    with sceneUnchanged():
        labelMap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, name)
        slicer.util.updateVolumeFromArray(labelMap, np.asarray(mask_zyx, np.uint8))
        writeVolume(labelMap, path)


# -- segmentations ---------------------------------------------------------------------------------


def chosenTerminology(segment) -> Optional[str]:
    """The segment's terminology entry, or None when nobody chose one: Slicer gives every new segment
    a default entry (Tissue / Tissue), which is not a code for the structure."""
    entry = vtk.reference("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), entry):
        return None
    fresh, default = slicer.vtkSegment(), vtk.reference("")
    fresh.GetTag(fresh.GetTerminologyEntryTagName(), default)
    return None if segments.is_unset_terminology(str(entry), str(default)) else str(entry)


def writeSegmentationAsLabelMap(segmentation, path, geometryVolume) -> None:
    """Segments as a label map on the reference grid, with its label table.

    Segments keep the label value they had in the engine's output (see `segments.export_values`);
    Slicer's export takes the values from a colour table matched by segment name. Every node this
    adds is removed again, also those Slicer adds itself (Slicer >= 5.10's export adds a colour
    table "<segmentation>_ColorTable" to the label map), whether the export succeeds or not."""
    with sceneUnchanged():
        _exportSegmentationAsLabelMap(segmentation, path, geometryVolume)


def _exportSegmentationAsLabelMap(segmentation, path, geometryVolume) -> None:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    if ids.GetNumberOfValues() == 0:
        raise ValueError(f"The segmentation {segmentation.GetName()} has no segments.")
    described, remembered = [], []
    for i in range(ids.GetNumberOfValues()):
        segment = segmentation.GetSegmentation().GetSegment(ids.GetValue(i))
        value = vtk.reference("")  # GetTag answers through a reference
        described.append((segment.GetName(), segment.GetColor(), chosenTerminology(segment)))
        remembered.append(str(value) if segment.GetTag(segments.LABEL_VALUE_TAG, value) else None)
    table = segments.label_table_for_segments(described, segments.export_values(remembered))
    labelMap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode")
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(max(label.value for label in table) + 1)
    for (name, color, _term), label in zip(described, table):
        colorNode.SetColor(label.value, name, *color, 1.0)
    if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            segmentation, ids, labelMap, geometryVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colorNode):
        raise ValueError(f"The segmentation {segmentation.GetName()} could not be exported as a label map.")
    writeVolume(labelMap, path)
    results.write_label_table(table, path)


# -- DICOM -----------------------------------------------------------------------------------------


def dicomFiles(volume):
    """The files of the DICOM series a volume was loaded from (Slicer's DICOM database), or None."""
    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split() if volume else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    files = [database.fileForInstance(uid) for uid in uids]
    return [f for f in files if f] or None


def linkFiles(files, folder: pathlib.Path) -> pathlib.Path:
    """Gather a DICOM series' files in one private folder (hard links where possible)."""
    folder.mkdir()
    for index, source in enumerate(files):
        target = folder / f"{index:05d}.dcm"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return folder

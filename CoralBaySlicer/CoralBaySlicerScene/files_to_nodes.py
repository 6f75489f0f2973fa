"""Engine files read into the scene: label maps as named segments, distance maps, tables.

Why one home: segment, compare, the phantom sample and the interactive session all bring the
engine's label maps back; they get the label table's names, colours and terminology codes the same
way, and a failed import leaves the scene as it was.
"""

from __future__ import annotations

import pathlib

import numpy as np
import vtk

import slicer
from coralbay.errors import InputError
from coralbay.io.header_checks import check_compressed_data, check_header
from coralbay.io.labels import LabelTable
from CoralBaySlicerLib import results, segments
from CoralBaySlicerScene.scene_guard import nodeIDs, removeNodesAddedSince, sceneUnchanged
from CoralBaySlicerScene.terminology import terminologyEntry


def importLabelMap(labelsFile, name: str, geometryVolume, segmentationNode=None):
    """Load an engine label map as segments with the label table's names, colours and terminology.

    The segmentation references `geometryVolume` (so Slicer's DICOM SEG export works) and is
    placed beside it in the subject hierarchy. With `segmentationNode`, its segments are replaced,
    but only once the import has succeeded. A label map without a label table (not written by the
    engine) gets generic names. Only the segmentation (with its display node) stays in the scene:
    the temporary label map and colour table go again, and a failed import leaves the scene as it was."""
    before = nodeIDs()
    try:
        segmentationNode = _importLabelMapNodes(labelsFile, name, geometryVolume, segmentationNode)
    except Exception:
        removeNodesAddedSince(before)
        raise
    removeNodesAddedSince(before, keep=segmentationNode)
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    volumeItem, segmentationItem = shNode.GetItemByDataNode(geometryVolume), shNode.GetItemByDataNode(segmentationNode)
    if volumeItem and segmentationItem:  # items are made by Slicer's subject hierarchy plugins
        shNode.SetItemParent(segmentationItem, shNode.GetItemParent(volumeItem))
    return segmentationNode


def verifiedFile(path) -> str:
    """`path` once its header and whole compressed stream are checked (the engine's own reader
    check): Slicer's readers, like ITK's, take a file cut short as valid and fill the rest with
    zeros. A damaged file raises ResultError with the engine's sentence."""
    try:
        check_compressed_data(check_header(path))
    except (InputError, OSError) as error:
        raise results.ResultError(str(error)) from None
    return str(path)


def _importLabelMapNodes(labelsFile, name: str, geometryVolume, segmentationNode):
    labelMap = slicer.util.loadLabelVolume(verifiedFile(labelsFile), {"name": f"{name} labels", "show": False})
    colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name} colors")
    imported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        try:
            described = results.label_map_segments(labelsFile)
        except results.ResultError:
            values = [int(v) for v in np.unique(slicer.util.arrayFromVolume(labelMap)) if v > 0]
            described = results.segments_from_table(LabelTable.generic(values))
        if not described:
            raise results.ResultError(f"The label map {pathlib.Path(labelsFile).name} has no structures.")
        colorNode.SetTypeToUser()
        colorNode.SetNumberOfColors(max(s.value for s in described) + 1)
        colorNode.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for s in described:
            colorNode.SetColor(s.value, s.name, *s.color, 1.0)
        labelMap.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
        imported.CreateDefaultDisplayNodes()
        imported.SetReferenceImageGeometryParameterFromVolumeNode(geometryVolume)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMap, imported):
            raise results.ResultError(f"The label map {pathlib.Path(labelsFile).name} could not be imported.")
    finally:
        slicer.mrmlScene.RemoveNode(labelMap)  # Slicer's Data module removes its display and storage nodes
        slicer.mrmlScene.RemoveNode(colorNode)
    # Segments are matched by their label value, not by name or ID: segment IDs are random, and
    # Slicer names the only segment of a one-label map after the label map node.
    segmentation = imported.GetSegmentation()
    byValue = {s.value: s for s in described}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        s = byValue.get(segment.GetLabelValue())
        if s is not None:  # a structure the table does not code gets Slicer's terminology, if it has one
            describeSegment(segment, s.name, s.color, s.value, s.terminology or terminologyEntry(s.name))
    if segmentationNode is not None:
        segmentationNode.GetSegmentation().DeepCopy(segmentation)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(geometryVolume)
        slicer.mrmlScene.RemoveNode(imported)
        return segmentationNode
    return imported


def describeSegment(segment, name: str, color, value: int, terminology=None) -> None:
    """Name, colour, the engine's label value (kept when written back for the engine) and the
    terminology entry (only when there is one: Slicer's placeholder is no code)."""
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetTag(segments.LABEL_VALUE_TAG, str(value))
    if terminology:
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)


def labelMapArray(path) -> np.ndarray:
    """The voxels (z, y, x) of a label map file, read with Slicer's reader; no node stays."""
    with sceneUnchanged():
        labelMap = slicer.util.loadLabelVolume(verifiedFile(path), {"show": False})
        return slicer.util.arrayFromVolume(labelMap).copy()  # the node goes on leaving


def loadDistanceMap(path, name: str):
    """The signed surface-distance map as a blue-red overlay in the slice views."""
    node = slicer.util.loadVolume(verifiedFile(path), {"name": name, "show": False})
    forgetTemporaryFile(node)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileDivergingBlueRed.txt")
    scalarRange = node.GetImageData().GetScalarRange()
    limit = max(abs(scalarRange[0]), abs(scalarRange[1]), 1.0)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(-limit, limit)
    slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)
    return node


def forgetTemporaryFile(node) -> None:
    """Detach a node from the run's file (removed with the run), so Slicer saves it as new data."""
    storage = node.GetStorageNode()
    if storage is not None:
        node.SetAndObserveStorageNodeID(None)
        slicer.mrmlScene.RemoveNode(storage)


def fillTable(tableNode, columns, rows) -> None:
    """Fill a table node: the first column as text, the others as numbers."""
    table = tableNode.GetTable()
    for index, column in enumerate(columns):
        array = vtk.vtkStringArray() if index == 0 else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(str(row[index]) if index == 0 else float(row[index]))
        table.AddColumn(array)
    tableNode.Modified()

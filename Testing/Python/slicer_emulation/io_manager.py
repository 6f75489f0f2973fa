"""EMULATES qSlicerCoreIOManager and its two readers the module uses (Qt classes of Slicer's
application): qSlicerVolumesReader (Modules/Loadable/Volumes/qSlicerVolumesReader.cxx, file type
"VolumeFile") and qSlicerSegmentationsReader (Modules/Loadable/Segmentations/
qSlicerSegmentationsReader.cxx, file type "SegmentationFile").

`slicer.util.loadVolume`, `loadLabelVolume` and `loadSegmentation` are REAL slicer-core code: they call
`slicer.app.coreIOManager().loadNodes(fileType, properties, nodes, messages)`. The readers here do
what Slicer's do, with the REAL module logics: the volumes reader calls
`vtkSlicerVolumesLogic::AddArchetypeVolume` with the loading options bit-coded from the properties
(labelmap 1, center 2, singleFile 4, autoWindowLevel 8, discardOrientation 16), sets the colour node
given as `colorNodeID`, and when `show` (default True) shows the volume in the slice views; the
segmentations reader calls `vtkSlicerSegmentationsModuleLogic::LoadSegmentationFromFile`.
"""

from __future__ import annotations

import os

import slicer
import vtk

_SEGMENTATION_SUFFIXES = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")
_VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr", ".img", ".img.gz")


def _volumeOptions(properties: dict) -> int:
    bits = (("labelmap", 1), ("center", 2), ("singleFile", 4), ("autoWindowLevel", 8), ("discardOrientation", 16))
    return sum(bit for key, bit in bits if properties.get(key, key == "autoWindowLevel"))


def _defaultName(fileName: str) -> str:
    """QFileInfo(fileName).baseName(): the file name up to its first dot."""
    return os.path.basename(fileName).split(".")[0]


class CoreIOManager:
    def fileType(self, fileName) -> str:
        name = str(fileName).lower()
        if name.endswith(_SEGMENTATION_SUFFIXES):
            return "SegmentationFile"
        if name.endswith(_VOLUME_SUFFIXES):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes, userMessages=None) -> bool:
        fileName = str(properties["fileName"])
        if fileType == "VolumeFile":
            node = self._loadVolume(fileName, properties, userMessages)
        elif fileType == "SegmentationFile":
            node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), properties.get("name") or _defaultName(fileName))
        else:
            node = None
        if node is None:
            return False
        loadedNodes.AddItem(node)
        return True

    @staticmethod
    def _loadVolume(fileName, properties, userMessages):
        volumesLogic = slicer.modules.volumes.logic()
        fileList = vtk.vtkStringArray()
        for extra in properties.get("fileNames", []):
            fileList.InsertNextValue(str(extra))
        node = volumesLogic.AddArchetypeVolume(fileName, properties.get("name") or _defaultName(fileName),
                                               _volumeOptions(properties), fileList, userMessages)
        if node is None:
            return None
        colorNodeID = properties.get("colorNodeID")
        if colorNodeID and node.GetDisplayNode():
            node.GetDisplayNode().SetAndObserveColorNodeID(colorNodeID)
        if properties.get("show", True):
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                slicer.util.setSliceViewerLayers(label=node)
            else:
                slicer.util.setSliceViewerLayers(background=node)
        return node

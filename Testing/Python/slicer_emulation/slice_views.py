"""EMULATES the slice views of Slicer's layout (qMRMLLayoutManager / qMRMLSliceWidget create, for each
view, a vtkMRMLSliceNode and a vtkMRMLSliceCompositeNode with the view's layout name).

The nodes are REAL MRML nodes; `slicer.util.setSliceViewerLayers` (real slicer-core) sets their
layers and `vtkSlicerMarkupsLogic::JumpSlicesToLocation` (real) moves them. Only their creation,
which the Qt layout does in Slicer, happens here.
"""

from __future__ import annotations

import slicer

VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def create(scene) -> None:
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for layoutName, orientation in VIEWS.items():
        sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        sliceNode.SetName(layoutName)
        sliceNode.SetLayoutName(layoutName)
        sliceNode.SetOrientation(orientation)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(layoutName)

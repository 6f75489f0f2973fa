"""EMULATES qSlicerSubjectHierarchyPluginLogic::onNodeAdded (Modules/Loadable/SubjectHierarchy/
Widgets/qSlicerSubjectHierarchyPluginLogic.cxx): in Slicer, a Qt plugin that can own a newly added
data node gives it a subject-hierarchy item under the scene item. The vtkMRMLSubjectHierarchyNode
itself is REAL; only this creation of items, which Slicer's Qt plugins do, happens here.

Nodes that get an item: data nodes the plugins own (volumes, segmentations, tables, markups, colour
tables are excluded by their plugin unless shown in editors), not hidden from editors.
"""

from __future__ import annotations

import slicer
import vtk

OWNED_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLMarkupsNode",
                 "vtkMRMLModelNode")


def install(scene) -> None:
    def onNodeAdded(caller, event, node):
        if node is None or node.GetHideFromEditors() or not any(node.IsA(c) for c in OWNED_CLASSES):
            return
        hierarchy = scene.GetSubjectHierarchyNode()
        if hierarchy.GetItemByDataNode(node) == 0:
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)

    onNodeAdded.CallDataType = vtk.VTK_OBJECT
    scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded)

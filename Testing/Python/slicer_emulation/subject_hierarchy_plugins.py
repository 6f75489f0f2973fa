"""EMULATES qSlicerSubjectHierarchyPluginLogic::onNodeAdded (Modules/Loadable/SubjectHierarchy/
Widgets/qSlicerSubjectHierarchyPluginLogic.cxx): in Slicer, a Qt plugin that can own a newly added
data node gives it a subject-hierarchy item under the scene item. The vtkMRMLSubjectHierarchyNode
itself is REAL; only this creation of items, which Slicer's Qt plugins do, happens here.

As there: nothing while a scene is being imported, nothing for nodes hidden from editors; the nodes
that get an item are those of the plugins the module meets (volumes, segmentations, tables, markups,
models).
"""

from __future__ import annotations

import slicer
import vtk

OWNED_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLMarkupsNode",
                 "vtkMRMLModelNode")


def install(scene) -> None:
    def onNodeAdded(caller, event, node):
        if scene.IsImporting() or node is None or node.GetHideFromEditors() or not any(node.IsA(c) for c in OWNED_CLASSES):
            return
        hierarchy = scene.GetSubjectHierarchyNode()
        if hierarchy.GetItemByDataNode(node) == 0:
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)

    onNodeAdded.CallDataType = vtk.VTK_OBJECT
    scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded)

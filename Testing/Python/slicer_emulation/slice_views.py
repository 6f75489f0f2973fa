"""EMULATES the slice views of Slicer's layout (qMRMLLayoutManager / qMRMLSliceWidget create, for each
view, a vtkMRMLSliceNode and a vtkMRMLSliceCompositeNode with the view's layout name), and what a
qMRMLSliceView draws (Libs/MRML/Widgets/qMRMLSliceView.cxx, ctkVTKSliceView).

The nodes are REAL MRML nodes; `slicer.util.setSliceViewerLayers` (real slicer-core) sets their
layers and `vtkSlicerMarkupsLogic::JumpSlicesToLocation` (real) moves them. Only their creation,
which the Qt layout does in Slicer, happens here. `render` draws a view with REAL slicer-core code
on an offscreen VTK window: vtkMRMLSliceLogic's resliced, blended image (shown as ctkVTKSliceView's
vtkLightBoxRendererManager does, a vtkImageMapper with window 255 / level 127.5) under the
displayable managers the view instantiates from Slicer's factory (segmentations, registered by the
Segmentations module; markups, by the Markups module). The Qt widget around it is what is emulated.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

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


DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")


def render(layoutName: str, size: int, throughRAS=None) -> np.ndarray:
    """The view `layoutName` (Red, Yellow, Green) as RGB pixels (rows top first), `size` x `size`,
    fitted to its volumes and, with `throughRAS`, moved to the slice through that point."""
    sliceNode = next(n for n in slicer.util.getNodesByClass("vtkMRMLSliceNode") if n.GetLayoutName() == layoutName)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(slicer.app.applicationLogic)
    logic.SetMRMLScene(slicer.mrmlScene)
    logic.SetSliceNode(sliceNode)
    logic.ResizeSliceNode(size, size)
    logic.FitSliceToAll()
    if throughRAS is not None:
        sliceNode.JumpSliceByOffsetting(*throughRAS)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(slicer.app.applicationLogic)
    for name in DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    renderer, window = vtk.vtkRenderer(), vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    mapper = vtk.vtkImageMapper()
    mapper.SetInputConnection(logic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    renderer.AddViewProp(actor)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(sliceNode)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    pixels = numpy_support.vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(size, size, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])

"""Test double of 3D Slicer's `slicer` package (NOT Slicer). See ../README.md.

Only what CoralBaySlicer's Logic calls: a scene with node classes, volumes held as SimpleITK images
(geometry in LPS, as ITK has it; RAS bounds derived the way Slicer defines them), segmentations as
binary masks, tables as real vtkTables, a subject hierarchy as a parent map, and the two module
logics the Logic uses (segmentations, markups).
"""

from __future__ import annotations

import itertools
import os
import tempfile

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support


# -- application -------------------------------------------------------------------------------------


class _App:
    def __init__(self):
        root = tempfile.mkdtemp(prefix="slicer-test-double-")
        self.temporaryPath = os.path.join(root, "temp")
        self.cachePath = os.path.join(root, "cache")
        os.makedirs(self.temporaryPath)
        os.makedirs(self.cachePath)
        self.processed_events = 0

    def processEvents(self):
        self.processed_events += 1


app = _App()


# -- nodes -------------------------------------------------------------------------------------------

_ids = itertools.count(1)


class vtkMRMLNode:
    def __init__(self, name=None):
        self._id = f"{type(self).__name__}{next(_ids)}"
        self._name = name or type(self).__name__
        self._attributes = {}
        self._references = {}
        self.modified_count = 0

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def IsA(self, class_name):
        return any(c.__name__ == class_name for c in type(self).__mro__)

    def GetAttribute(self, name):
        return self._attributes.get(name)

    def SetAttribute(self, name, value):
        self._attributes[name] = value

    def GetNodeReference(self, role):
        return self._references.get(role)

    def Modified(self):
        self.modified_count += 1


class vtkMRMLStorableNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self._storage = None
        self._display = None

    def GetStorageNode(self):
        return self._storage

    def SetAndObserveStorageNodeID(self, node_id):
        self._storage = mrmlScene.GetNodeByID(node_id) if node_id else None

    def GetDisplayNode(self):
        return self._display


class vtkMRMLVolumeArchetypeStorageNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.file_name = None
        self.compression = True

    def SetFileName(self, path):
        self.file_name = str(path)

    def GetFileName(self):
        return self.file_name

    def UseCompressionOff(self):
        self.compression = False

    def WriteData(self, node):
        if node.image is None:
            return False
        sitk.WriteImage(node.image, self.file_name, useCompression=self.compression)
        return True


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.color_node_id = None
        self.auto_window_level = True
        self.window_level_min_max = None

    def SetAndObserveColorNodeID(self, node_id):
        self.color_node_id = node_id

    def GetColorNode(self):
        return mrmlScene.GetNodeByID(self.color_node_id) if self.color_node_id else None

    def AutoWindowLevelOff(self):
        self.auto_window_level = False

    def SetWindowLevelMinMax(self, low, high):
        self.window_level_min_max = (low, high)


class vtkMRMLScalarVolumeNode(vtkMRMLStorableNode):
    """A volume held as a SimpleITK image (LPS geometry)."""

    def __init__(self, name=None):
        super().__init__(name)
        self.image = None

    def SetImage(self, image):
        self.image = image
        self._display = self._display or vtkMRMLScalarVolumeDisplayNode()

    def GetImageData(self):
        if self.image is None:
            return None
        array = sitk.GetArrayFromImage(self.image)  # z, y, x
        data = vtk.vtkImageData()
        data.SetDimensions(*self.image.GetSize())
        data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
        return data

    def GetRASBounds(self, bounds):
        """Bounds of the voxel corners in RAS, like vtkMRMLVolumeNode::GetRASBounds."""
        size = self.image.GetSize()
        corners = []
        for index in itertools.product(*[(-0.5, s - 0.5) for s in size]):
            x, y, z = self.image.TransformContinuousIndexToPhysicalPoint(index)
            corners.append((-x, -y, z))
        corners = np.array(corners)
        bounds[:] = [v for axis in range(3) for v in (corners[:, axis].min(), corners[:, axis].max())]


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLColorTableNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.user_type = False
        self.colors = []

    def SetTypeToUser(self):
        self.user_type = True

    def SetNumberOfColors(self, count):
        self.colors = [("", (0.0, 0.0, 0.0, 0.0))] * count

    def GetNumberOfColors(self):
        return len(self.colors)

    def SetColor(self, index, name, r, g, b, a=1.0):
        self.colors[index] = (name, (r, g, b, a))

    def GetColorName(self, index):
        return self.colors[index][0]

    def GetColor(self, index, rgba):
        rgba[:] = list(self.colors[index][1])


class vtkSegment:
    def __init__(self, name, color, mask, geometry):
        self._name = name
        self._color = tuple(color)
        self.mask = mask  # numpy bool array, z y x, on `geometry`
        self.geometry = geometry  # SimpleITK image whose grid the mask lies on
        self._tags = {}

    def GetName(self):
        return self._name

    def GetColor(self):
        return self._color

    @staticmethod
    def GetTerminologyEntryTagName():
        return "TerminologyEntry"

    def SetTag(self, name, value):
        self._tags[name] = value

    def GetTag(self, name, value_reference):
        if name not in self._tags:
            return False
        value_reference.set(self._tags[name])
        return True


class vtkSegmentation:
    EXTENT_REFERENCE_GEOMETRY = 2

    def __init__(self):
        self._segments = {}  # id -> vtkSegment, in order

    def AddSegment(self, segment):
        segment_id, n = segment.GetName(), 1
        while segment_id in self._segments:
            n += 1
            segment_id = f"{segment.GetName()}_{n}"
        self._segments[segment_id] = segment
        return segment_id

    def GetSegmentIDs(self, string_array):
        for segment_id in self._segments:
            string_array.InsertNextValue(segment_id)

    def GetSegment(self, segment_id):
        return self._segments.get(segment_id)

    def GetSegmentIdBySegmentName(self, name):
        return next((i for i, s in self._segments.items() if s.GetName().lower() == name.lower()), "")

    def GetNumberOfSegments(self):
        return len(self._segments)

    def RemoveAllSegments(self):
        self._segments.clear()

    def DeepCopy(self, other):
        self._segments = dict(other._segments)


class vtkMRMLSegmentationDisplayNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.hidden_segments = set()

    def SetSegmentVisibility(self, segment_id, visible):
        (self.hidden_segments.discard if visible else self.hidden_segments.add)(segment_id)


class vtkMRMLSegmentationNode(vtkMRMLStorableNode):
    REFERENCE_ROLE = "referenceImageGeometryRef"

    def __init__(self, name=None):
        super().__init__(name)
        self._segmentation = vtkSegmentation()
        self.closed_surface = False

    def GetSegmentation(self):
        return self._segmentation

    def CreateDefaultDisplayNodes(self):
        self._display = self._display or vtkMRMLSegmentationDisplayNode()

    def GetReferenceImageGeometryReferenceRole(self):
        return self.REFERENCE_ROLE

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        self._references[self.REFERENCE_ROLE] = volume

    def CreateClosedSurfaceRepresentation(self):
        self.closed_surface = True


class vtkMRMLTableNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self._table = vtk.vtkTable()

    def GetTable(self):
        return self._table


class vtkMRMLMarkupsROINode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.ras_bounds = [0.0] * 6

    def GetRASBounds(self, bounds):
        bounds[:] = list(self.ras_bounds)


class vtkMRMLMarkupsFiducialNode(vtkMRMLNode):
    def __init__(self, name=None):
        super().__init__(name)
        self.points = []  # (label, [r, a, s])

    def AddControlPoint(self, position, label=""):
        self.points.append((label, [float(v) for v in position]))

    def GetNumberOfControlPoints(self):
        return len(self.points)

    def GetNthControlPointPositionWorld(self, index, position):
        position[:] = list(self.points[index][1])

    def GetNthControlPointLabel(self, index):
        return self.points[index][0]


class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    SCENE_ITEM = 1

    def __init__(self, name=None):
        super().__init__(name)
        self._next_item = itertools.count(2)
        self._item_of_node = {}
        self._parent = {}
        self.folders = {}

    def GetItemByDataNode(self, node):
        if node.GetID() not in self._item_of_node:
            item = next(self._next_item)
            self._item_of_node[node.GetID()] = item
            self._parent[item] = self.SCENE_ITEM
        return self._item_of_node[node.GetID()]

    def CreateFolderItem(self, parent, name):
        item = next(self._next_item)
        self._parent[item] = parent
        self.folders[item] = name
        return item

    def GetItemParent(self, item):
        return self._parent.get(item, 0)

    def SetItemParent(self, item, parent):
        self._parent[item] = parent


_NODE_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLVolumeArchetypeStorageNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode,
    vtkMRMLColorTableNode, vtkMRMLSegmentationNode, vtkMRMLTableNode, vtkMRMLMarkupsROINode,
    vtkMRMLMarkupsFiducialNode)}


# -- scene -------------------------------------------------------------------------------------------


class _Scene:
    StartCloseEvent = "StartCloseEvent"
    EndCloseEvent = "EndCloseEvent"

    def __init__(self):
        self._nodes = []
        self._hierarchy = vtkMRMLSubjectHierarchyNode("SubjectHierarchy")

    def Clear(self, remove_singletons=False):
        self._nodes = []
        self._hierarchy = vtkMRMLSubjectHierarchyNode("SubjectHierarchy")

    def AddNewNodeByClass(self, class_name, name=None):
        node = _NODE_CLASSES[class_name](name)
        self.AddNode(node)
        return node

    def AddNode(self, node):
        self._nodes.append(node)
        return node

    def RemoveNode(self, node):
        if node in self._nodes:
            self._nodes.remove(node)
            for owned in (getattr(node, "_storage", None),):
                if owned in self._nodes:
                    self._nodes.remove(owned)

    def GetNodeByID(self, node_id):
        return next((n for n in self._nodes if n.GetID() == node_id), None)

    def GetNumberOfNodes(self):
        return len(self._nodes)

    def GetNthNode(self, index):
        return self._nodes[index]

    def GetSubjectHierarchyNode(self):
        return self._hierarchy

    def nodes_of_class(self, class_name):
        return [n for n in self._nodes if n.IsA(class_name)]


mrmlScene = _Scene()


# -- module logics -----------------------------------------------------------------------------------


class _SegmentationsLogic:
    @staticmethod
    def ImportLabelmapToSegmentationNode(label_map, segmentation_node, insert_before=""):
        """One segment per label value present; names and colours from the label map's colour table."""
        array = sitk.GetArrayFromImage(label_map.image)
        color_node = label_map.GetDisplayNode().GetColorNode()
        for value in sorted(int(v) for v in np.unique(array) if v != 0):
            name, rgba = f"Label_{value}", (0.5, 0.5, 0.5, 1.0)
            if color_node is not None and value < color_node.GetNumberOfColors():
                name, rgba = color_node.colors[value][0] or name, color_node.colors[value][1]
            segment = vtkSegment(name, rgba[:3], array == value, label_map.image)
            segmentation_node.GetSegmentation().AddSegment(segment)
        return True

    @staticmethod
    def ExportSegmentsToLabelmapNode(segmentation_node, segment_ids, label_map, reference_volume,
                                     extent_mode=None, color_table=None):
        """Segments merged into one label map on the reference volume's grid. A segment's value is
        that of the colour table entry with its name, else (n-th segment) n + 1."""
        reference = reference_volume.image
        merged = np.zeros(sitk.GetArrayFromImage(reference).shape, dtype=np.int16)
        segmentation = segmentation_node.GetSegmentation()
        names = {entry[0]: value for value, entry in enumerate(color_table.colors)} if color_table else {}
        for index in range(segment_ids.GetNumberOfValues()):
            segment = segmentation.GetSegment(segment_ids.GetValue(index))
            if segment.mask.shape != merged.shape or not _same_grid(segment.geometry, reference):
                raise NotImplementedError("the test double only exports segments on the reference grid")
            merged[segment.mask] = names.get(segment.GetName(), index + 1)
        image = sitk.GetImageFromArray(merged)
        image.CopyInformation(reference)
        label_map.SetImage(image)
        return True


def _same_grid(a, b):
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


class _MarkupsLogic:
    def __init__(self):
        self.jumps = []

    def JumpSlicesToLocation(self, x, y, z, centered, view_group=-1):
        self.jumps.append(((x, y, z), centered))


class _Module:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class _Modules:
    def __init__(self):
        self.segmentations = _Module(_SegmentationsLogic())
        self.markups = _Module(_MarkupsLogic())


modules = _Modules()

from slicer import util  # noqa: E402  (util uses the scene defined above)

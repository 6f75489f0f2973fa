"""Test double of `slicer.util` (NOT Slicer): only the functions the CoralBaySlicer logic calls."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

import slicer

slice_viewer_layers: list[dict] = []  # every setSliceViewerLayers call, for assertions


def startupEnvironment():
    return dict(os.environ)


def _load(filename, properties, node_class):
    image = sitk.ReadImage(str(filename))
    name = properties.get("name") or Path(filename).name.split(".")[0]
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, name)
    node.SetImage(image)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(filename)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def loadVolume(filename, properties={}, returnNode=False):  # noqa: B006 - Slicer's signature
    return _load(filename, properties, "vtkMRMLLabelMapVolumeNode" if properties.get("labelmap") else "vtkMRMLScalarVolumeNode")


def loadLabelVolume(filename, properties={}, returnNode=False):  # noqa: B006 - Slicer's signature
    return loadVolume(filename, {**properties, "labelmap": True})


def setSliceViewerLayers(**layers):
    slice_viewer_layers.append(layers)


class VTKObservationMixin:
    def __init__(self):
        self.Observations = []

    def addObserver(self, obj, event, method, priority=0.0):
        self.Observations.append((obj, event, method))

    def removeObserver(self, obj, event, method):
        self.Observations = [o for o in self.Observations if o != (obj, event, method)]

    def removeObservers(self, method=None):
        self.Observations = []


def arrayFromVolume(volumeNode):
    """The voxels as a numpy array indexed [k, j, i], as Slicer gives them."""
    return sitk.GetArrayFromImage(volumeNode.image)

"""Test double of `slicer.ScriptedLoadableModule` (NOT Slicer): the four base classes, minimal."""

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self._parameter_node = None

    def getParameterNode(self):
        if self._parameter_node is None:
            self._parameter_node = slicer.mrmlScene.AddNode(slicer.vtkMRMLNode("CoralBaySlicer parameters"))
        return self._parameter_node


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=None):
        pass

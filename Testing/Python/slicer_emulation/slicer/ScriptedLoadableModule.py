"""EMULATES Base/Python/slicer/ScriptedLoadableModule.py (Slicer's application, not in slicer-core).

Only the Logic and Test bases hold behaviour the module relies on outside its widget:
`ScriptedLoadableModuleLogic.getParameterNode()` returns the scene's singleton
vtkMRMLScriptedModuleNode of the module (singleton tag and "ModuleName" attribute = the class name
without "Logic", hidden from editors), creating it on first use - a REAL MRML node in the REAL scene.
The module and widget bases (Qt panels) are placeholders: the widget runs only in the in-Slicer self-test.
"""

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            return node
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetHideFromEditors(True)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=None):
        pass

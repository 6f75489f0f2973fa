"""EMULATES qMRMLSegmentSelectorWidget (Libs/MRML/Widgets... Modules/Loadable/Segmentations/Widgets/
qMRMLSegmentSelectorWidget.cxx): a segmentation node chosen with one of its segments. Here the test
sets both (`setCurrentNode`, `setCurrentSegmentID`); the section reads them as Slicer's does."""

from __future__ import annotations

from qt_widgets import Widget


class qMRMLSegmentSelectorWidget(Widget):
    def __init__(self, name: str = "", parent=None) -> None:
        super().__init__(name, parent)
        self._node = None
        self._segmentId = ""

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def setCurrentNode(self, node) -> None:
        self._node = node

    def currentNode(self):
        return self._node

    def setCurrentSegmentID(self, segmentId: str) -> None:
        self._segmentId = segmentId

    def currentSegmentID(self) -> str:
        return self._segmentId

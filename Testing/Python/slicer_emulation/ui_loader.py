"""EMULATES slicer.util.loadUI + slicer.util.childWidgetVariables (Base/Python/slicer/util.py): the
panel's .ui read into one object per widget, named as in the file, of the emulated class standing for
its Qt class (qt_widgets.py, segment_selector.py; any other class: a plain emulated widget)."""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET

import qt_widgets
from segment_selector import qMRMLSegmentSelectorWidget

CLASSES = {"QPushButton": qt_widgets.QPushButton, "QComboBox": qt_widgets.QComboBox, "QLabel": qt_widgets.QLabel,
           "QLineEdit": qt_widgets.QLineEdit, "QCheckBox": qt_widgets.QCheckBox,
           "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget}


def childWidgetVariables(uiFile) -> types.SimpleNamespace:
    widgets = {}
    for element in ET.parse(str(uiFile)).getroot().iter("widget"):
        name = element.get("name")
        widget = CLASSES.get(element.get("class"), qt_widgets.Widget)(name)
        text = element.find("./property[@name='text']/string")
        if text is not None and text.text:
            widget.text = text.text
        widgets[name] = widget
    return types.SimpleNamespace(**widgets)

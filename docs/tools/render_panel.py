"""Render the CoralBay panel (Resources/UI/CoralBaySlicer.ui) to docs/images/CoralBaySlicer-panel.png.

3D Slicer cannot run where this project is built, so the screenshot is rendered from the .ui file
with plain Qt (PyQt5, offscreen platform): each Slicer/CTK widget class is drawn as the Qt widget it
derives from (qMRMLNodeComboBox -> QComboBox, ctkCollapsibleButton -> QGroupBox, ctkSliderWidget ->
QDoubleSpinBox, ctkDirectoryButton -> QPushButton, qMRMLTableView -> QTableView, qMRMLWidget ->
QWidget). Layout, labels, buttons and tooltips are the .ui's own; the combo boxes are filled with
the names a user sees after loading the sample phantom.

    python -m venv /tmp/qt && /tmp/qt/bin/pip install PyQt5==5.15.11
    QT_QPA_PLATFORM=offscreen /tmp/qt/bin/python docs/tools/render_panel.py
    QT_QPA_PLATFORM=offscreen /tmp/qt/bin/python docs/tools/render_panel.py --scan /tmp/panel-scan.png

With `--scan OUT`, the panel shows the nodes of docs/tools/render_slice_views.py (the TotalSegmentator
example CT, its interactive segmentation) and is written to OUT for that figure.
"""

import ast
import json
import re
import sys
from pathlib import Path

from PyQt5 import QtWidgets, uic

REPO = Path(__file__).resolve().parents[2]
# The structures the panel lists for the demo bundle, read from its manifest (never typed in here).
DEMO_STRUCTURES = [label["name"] for label in json.loads(
    (REPO / "Resources" / "Models" / "demo-phantom-seg" / "manifest.json").read_text(encoding="utf-8"))["labels"]]
SAMPLE_NODES = {"inputVolumeSelector": "CoralBay phantom CT", "referenceSelector": "CoralBay phantom truth",
                "outputSegmentationSelector": "(create new segmentation)", "roiSelector": "None",
                "pointSelector": "None", "interactivePositiveSelector": "include", "interactiveNegativeSelector": "exclude",
                "interactiveStrokesSelector": "None", "structureComboBox": "liver", "interactiveBoxSelector": "None",
                "refineSegmentSelector": "None", "proposeWithComboBox": "accepted examples only"}
SCAN_NODES = {**SAMPLE_NODES, "inputVolumeSelector": "example_ct_sm", "referenceSelector": "None",
              "outputSegmentationSelector": "example_ct_sm interactive"}


def shortcuts_text() -> str:
    """The panel's Shortcuts line as interactive_section.shortcutsText() writes it (read from its
    SHORTCUTS table without importing Slicer)."""
    tree = ast.parse((REPO / "CoralBaySlicer" / "CoralBaySlicerScene" / "interactive_section.py").read_text())
    table = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SHORTCUTS")
    return "  ".join(f"{key}: {what}" for key, what, _method in table)


class _Permissive:
    """Setters of Slicer/CTK-only properties (nodeTypes, noneEnabled...) are accepted and ignored."""

    def __getattr__(self, name):
        if name.startswith("set"):
            return lambda *args: None
        raise AttributeError(name)


class qMRMLNodeComboBox(_Permissive, QtWidgets.QComboBox):
    pass


class ctkCollapsibleButton(_Permissive, QtWidgets.QGroupBox):
    def setText(self, text):
        self.setTitle(text)


class ctkSliderWidget(_Permissive, QtWidgets.QDoubleSpinBox):
    pass


class ctkDirectoryButton(_Permissive, QtWidgets.QPushButton):
    def setDirectory(self, directory):
        self.setText(str(directory))


class qMRMLTableView(_Permissive, QtWidgets.QTableView):
    pass


class qMRMLWidget(_Permissive, QtWidgets.QWidget):
    pass


class qMRMLSegmentSelectorWidget(_Permissive, QtWidgets.QComboBox):
    pass


def plain_qt_ui(text: str) -> str:
    """The .ui with every custom widget's header pointing at this file's stand-in classes, without the
    MRML scene connections (there is no scene)."""
    text = re.sub(r"<connections>.*?</connections>", "", text, flags=re.S)
    return re.sub(r"<header>[^<]*</header>", "<header>render_panel.h</header>", text)


def main(argv: list) -> int:
    scan = argv[:1] == ["--scan"] and len(argv) == 2
    if argv and not scan:
        print("usage: render_panel.py [--scan OUT.png]", file=sys.stderr)
        return 2
    app = QtWidgets.QApplication(sys.argv[:1])
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # uic imports the stand-ins as `render_panel`
    sys.modules.setdefault("render_panel", sys.modules[__name__])
    source = (REPO / "Resources" / "UI" / "CoralBaySlicer.ui").read_text(encoding="utf-8")
    plain = Path("/tmp/CoralBaySlicer-plain.ui")
    plain.write_text(plain_qt_ui(source), encoding="utf-8")
    panel = uic.loadUi(str(plain))
    for name, label in (SCAN_NODES if scan else SAMPLE_NODES).items():
        combo = panel.findChild(QtWidgets.QComboBox, name)
        if combo is not None:
            combo.addItem(label)
    models = panel.findChild(QtWidgets.QComboBox, "modelComboBox")
    if models is not None:
        models.addItems([f"demo-phantom-seg (segmentation, {len(DEMO_STRUCTURES)} structures)",
                         "demo-phantom-cls (classification)"])
    for name, items in (("deviceComboBox", ["auto", "GPU", "CPU"]), ("engineComboBox", ["Local", "Remote"]),
                        ("exportFormatComboBox", ["seg.nrrd", "nifti", "nrrd", "dicom-seg", "stl", "obj"])):
        combo = panel.findChild(QtWidgets.QComboBox, name)
        if combo is not None:
            combo.addItems(items)
    folder = panel.findChild(QtWidgets.QPushButton, "exportFolderButton")
    if folder is not None:
        folder.setText(str(Path.home()))
    structures = panel.findChild(QtWidgets.QListWidget, "structuresListWidget")
    if structures is not None:
        for name in DEMO_STRUCTURES:
            item = QtWidgets.QListWidgetItem(name)
            item.setCheckState(2)
            structures.addItem(item)
    shortcuts = panel.findChild(QtWidgets.QLabel, "shortcutsLabel")
    if shortcuts is not None:
        shortcuts.setText(shortcuts_text())
    panel.resize(460, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    out = Path(argv[1]) if scan else REPO / "docs" / "images" / "CoralBaySlicer-panel.png"
    if not panel.grab().save(str(out)):
        print(f"could not write {out}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

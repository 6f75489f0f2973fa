"""The panel's model choice: the model list, its structures (checked to keep), and the
"Propose with" list of the Interactive section (segmentation models that can start structures).

Why apart from the widget: the same catalog entries feed three widgets and the Interactive
section's structure names; this keeps one place that turns catalog entries into list items.
"""

from __future__ import annotations

import qt

import slicer
from slicer.i18n import tr as _
from CoralBaySlicerLib import commands


class ModelSection:
    """Given the panel's `ui`, the logic, a function returning the parameter node (or None) and the
    panel's `log(level, message)` and `changed()` (refresh the buttons)."""

    def __init__(self, ui, logic, parameterNode, log, changed) -> None:
        self.ui, self.logic, self.parameterNode, self.log, self.changed = ui, logic, parameterNode, log, changed
        self.models = []
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        ui.structuresListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructuresChanged)
        ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        ui.proposeWithComboBox.connect("currentIndexChanged(int)", self.onProposeWithChanged)

    def refresh(self) -> None:
        try:
            self.models = self.logic.availableModels()
        except Exception as exc:  # noqa: BLE001 - the panel must open even if the catalog is broken
            self.models = []
            self.log("error", _("The model catalog could not be read: {error}").format(error=exc))
        self._fill(self.ui.modelComboBox, [(entry.display_name(), entry.name) for entry in self.models])
        # Proposals: from the accepted examples, or from a segmentation model (e.g. one taught here)
        self._fill(self.ui.proposeWithComboBox, [(_("accepted examples only"), "")] + [
            (entry.display_name(), entry.name) for entry in self.models if entry.segments])
        self.selectProposeWith()

    @staticmethod
    def _fill(combo, items) -> None:
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for text, data in items:
            combo.addItem(text, data)
        combo.blockSignals(wasBlocked)

    def selectProposeWith(self) -> None:
        p = self.parameterNode()
        combo = self.ui.proposeWithComboBox
        wasBlocked = combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(p.proposeWith) if p else 0))
        combo.blockSignals(wasBlocked)

    def onProposeWithChanged(self, index) -> None:
        p = self.parameterNode()
        if p:
            p.proposeWith = self.ui.proposeWithComboBox.itemData(index) or ""

    def select(self, name: str) -> None:
        index = self.ui.modelComboBox.findData(name) if name else -1
        if index < 0 and self.models:
            index = 0
        self.ui.modelComboBox.setCurrentIndex(index)
        self.onModelChanged(index)

    def current(self):
        index = self.ui.modelComboBox.currentIndex
        return self.models[index] if 0 <= index < len(self.models) else None

    def onModelChanged(self, index) -> None:
        entry, p = self.current(), self.parameterNode()
        if p and entry and p.model != entry.name:
            p.model = entry.name
            p.structures = ""
        checked = set(p.structures.split(",")) if p and p.structures else None
        names = entry.structures if entry and entry.segments else []
        listWidget = self.ui.structuresListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for name in names:
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if checked is None or name in checked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        # the Interactive section names structures after the chosen model's label table
        combo = self.ui.structureComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        combo.setCurrentIndex(-1)
        combo.blockSignals(wasBlocked)
        self.changed()

    def checkedStructures(self):
        listWidget = self.ui.structuresListWidget
        items = [listWidget.item(i) for i in range(listWidget.count)]
        return [item.text() for item in items if item.checkState() == qt.Qt.Checked]

    def onStructuresChanged(self, item=None) -> None:
        entry, p = self.current(), self.parameterNode()
        if p and entry:
            chosen = commands.selected_structures(entry.structures, self.checkedStructures())
            p.structures = "" if chosen is None else ",".join(chosen)

    def onAddModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a CoralBay model bundle folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be added."), waitCursor=True):
            entry = self.logic.addModel(folder)
            self.refresh()
            self.select(entry.name)
            self.log("info", _("Added model {name}.").format(name=entry.name))

"""The panel's Interactive section: its buttons, keyboard shortcuts and status line, wired to the
logic (interactive.InteractiveLogic) given to it, not to the whole widget.

Why shortcuts on the main window while the module is shown (as Slicer's Segment Editor does): the
user's eyes and mouse are in the slice views, where a panel shortcut never fires; they go again
when the module is left, so they never shadow another module's keys.
"""

from __future__ import annotations

import qt

import slicer
from slicer.i18n import tr as _
from coralbay.interactive.messages import EventKind, Request
from CoralBaySlicerLib.remote_client import RemoteError

# (key sequence, what it does, method of InteractiveSection); shown in the panel and docs/slicer.md
SHORTCUTS = (
    ("I", "place include points", "placeInclude"),
    ("E", "place exclude points", "placeExclude"),
    ("Ctrl+Z", "undo", "undo"),
    ("Ctrl+Y", "redo", "redo"),
    ("A", "accept", "accept"),
    ("N", "next structure", "nextStructure"),
)


def shortcutsText() -> str:
    return "  ".join(f"{key}: {what}" for key, what, _method in SHORTCUTS)


class InteractiveSection:
    """Given the panel's `ui`, the logic, a function returning the parameter node, the panel's
    `dependenciesReady()` and `changed()` (refresh the buttons)."""

    def __init__(self, ui, logic, parameterNode, dependenciesReady, changed) -> None:
        self.ui, self.logic, self.parameterNode = ui, logic, parameterNode
        self.dependenciesReady, self.changed = dependenciesReady, changed
        self.shortcuts = []
        self.observations = []  # (node, observer tag) of the point lists
        self.ui.structureComboBox.setCurrentIndex(-1)
        # picking a structure (or Enter after typing one) starts it: its proposal shows before any click
        ui.structureComboBox.connect("activated(int)", self.onStructureChosen)
        logic.interactiveCallback = self.onInteractiveEvents
        for button, slot in ((ui.startInteractiveButton, self.onStart), (ui.closeInteractiveButton, self.onClose),
                             (ui.placePositiveButton, self.placeInclude), (ui.placeNegativeButton, self.placeExclude),
                             (ui.updateInteractiveButton, self.onUpdate), (ui.undoInteractiveButton, self.undo),
                             (ui.redoInteractiveButton, self.redo), (ui.acceptInteractiveButton, self.accept),
                             (ui.nextStructureButton, self.nextStructure), (ui.sendBoxButton, self.sendBox),
                             (ui.refineSegmentButton, self.refineSegment),
                             (ui.cleanUpScansButton, self.cleanUpScans)):
            button.connect("clicked(bool)", lambda checked=False, slot=slot: slot())
        ui.shortcutsLabel.text = shortcutsText()

    # -- shortcuts (installed while the module is shown) --------------------------------------------

    def installShortcuts(self, parent) -> None:
        self.removeShortcuts()
        for key, _what, method in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), parent)
            shortcut.connect("activated()", getattr(self, method))
            self.shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self.shortcuts = []

    # -- actions -------------------------------------------------------------------------------------

    def act(self, action) -> None:
        """Run a logic request, reporting a refusal (no session, no structure, bad input) in one sentence."""
        try:
            action()
        except (ValueError, FileNotFoundError, RemoteError) as exc:
            slicer.util.errorDisplay(str(exc))
        self.showStatus()
        self.changed()

    def onStart(self) -> None:
        if not self.dependenciesReady():
            return
        p = self.parameterNode()

        def start():
            self.logic.startInteractive(p.inputVolume, p.model, outputSegmentation=p.segmentation, device=p.device,
                                        proposeWith=p.proposeWith, backbone=p.backbone)
            p.segmentation = self.logic.interactive.segmentation
            for field, name in (("interactivePositive", "include"), ("interactiveNegative", "exclude")):
                if getattr(p, field) is None:
                    setattr(p, field, slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name))
            self.observePoints()
        self.act(start)

    def observePoints(self) -> None:
        """Send each point as soon as it is placed: the answer updates after every click."""
        p = self.parameterNode()
        observed = {node for node, _tag in self.observations}
        for node in (p.interactivePositive, p.interactiveNegative):
            if node is not None and node not in observed:
                self.observations.append((node, node.AddObserver(node.PointPositionDefinedEvent, self.onPointPlaced)))

    def stopObservingPoints(self) -> None:
        for node, tag in self.observations:
            node.RemoveObserver(tag)
        self.observations = []

    def onPointPlaced(self, caller=None, event=None) -> None:
        if self.logic.interactive and self.logic.interactive.structure:
            self.act(self.sendPoints)

    def ensureStructure(self) -> None:
        name = self.ui.structureComboBox.currentText.strip()
        state = self.logic.interactive
        if state is not None and state.structure != name:
            self.logic.startStructure(name, propose=self.parameterNode().interactivePropose)

    def onStructureChosen(self, index=None) -> None:
        if self.logic.interactive and self.ui.structureComboBox.currentText.strip():
            self.act(self.ensureStructure)

    def nextStructure(self) -> None:
        """Start the model's next structure that the output segmentation lacks (shortcut N)."""
        def start():
            combo = self.ui.structureComboBox
            names = [combo.itemText(i) for i in range(combo.count)]
            name = self.logic.nextStructureName(names)
            if name is None:
                raise ValueError("Every structure of the model's list is done; type a new name to go on.")
            combo.setCurrentIndex(names.index(name))
            self.ensureStructure()
        self.act(start)

    def sendPoints(self) -> None:
        self.ensureStructure()
        p = self.parameterNode()
        if p.interactivePositive is not None:
            self.logic.addInteractivePoints(p.interactivePositive, True)
        if p.interactiveNegative is not None:
            self.logic.addInteractivePoints(p.interactiveNegative, False)

    def placeInclude(self) -> None:
        self.place(True)

    def placeExclude(self) -> None:
        self.place(False)

    def place(self, positive: bool) -> None:
        """Place mode on the include (or exclude) list; it stays on between points (Esc or a right
        click ends it, as everywhere in Slicer)."""
        p = self.parameterNode()
        node = p.interactivePositive if positive else p.interactiveNegative
        if node is None:
            slicer.util.errorDisplay(_("Start an interactive session first."))
            return
        self.observePoints()
        markups = slicer.modules.markups.logic()
        markups.SetActiveList(node)
        markups.StartPlaceMode(True)

    def onUpdate(self) -> None:
        def update():
            self.sendPoints()
            strokes = self.parameterNode().interactiveStrokes
            if strokes is not None:
                segmentation = strokes.GetSegmentation()
                for index in range(segmentation.GetNumberOfSegments()):
                    segment = segmentation.GetNthSegment(index)
                    positive = not segment.GetName().lower().startswith(("exclude", "negative", "-"))
                    self.logic.addInteractiveStroke(strokes, segmentation.GetNthSegmentID(index), positive)
        self.act(update)

    def sendBox(self) -> None:
        self.act(lambda: (self.ensureStructure(), self.logic.addInteractiveBox(self.parameterNode().interactiveBox)))

    def refineSegment(self) -> None:
        selector = self.ui.refineSegmentSelector
        self.act(lambda: (self.ensureStructure(),
                          self.logic.refineSegment(selector.currentNode(), selector.currentSegmentID())))

    def undo(self) -> None:
        self.act(self.logic.interactiveUndo)

    def redo(self) -> None:
        self.act(self.logic.interactiveRedo)

    def accept(self) -> None:
        self.act(self.logic.interactiveAccept)

    def cleanUpScans(self) -> None:
        self.act(self.logic.cleanUpKeptScans)

    # -- the Teach model row (the job itself is started by the widget, like Segment) -------------------

    def teachOptions(self) -> dict:
        """`logic.teachModel`'s startFrom and minutes from the row (bound to the parameter node): build
        on the model taught last here when ticked, and the time budget (0: none)."""
        p = self.parameterNode()
        return {"startFrom": p.taughtModel if p.taughtModel and p.teachBuildOn else None,
                "minutes": float(p.teachMinutes) if p.teachMinutes > 0 else None}

    def taught(self, model: str) -> None:
        """A teach succeeded: its model proposes in the next session and is the one to build on."""
        p = self.parameterNode()
        p.proposeWith = p.taughtModel = model
        self.showTeachRow()

    def showTeachRow(self) -> None:
        p = self.parameterNode()
        box, newest = self.ui.teachBuildOnCheckBox, p.taughtModel if p is not None else ""
        box.enabled = bool(newest)
        box.text = _("Build on {name}").format(name=newest) if newest else _("Build on the newest taught model")

    def onClose(self) -> None:
        self.logic.closeInteractive()
        self.stopObservingPoints()
        self.showStatus()
        self.changed()

    # -- what the engine says -------------------------------------------------------------------------

    def showStatus(self) -> None:
        self.ui.interactiveStatusLabel.text = self.logic.interactiveStatus

    def onInteractiveEvents(self, events) -> None:
        for event in events:
            if event.kind == EventKind.RESULT and event.request == Request.ACCEPT:
                self.ui.structureComboBox.setCurrentIndex(-1)
                p = self.parameterNode()
                for node in (p.interactivePositive, p.interactiveNegative):
                    if node is not None:
                        node.RemoveAllControlPoints()
        self.showStatus()
        self.changed()

    def updateButtons(self, canStart: bool) -> None:
        session = self.logic.interactive
        self.ui.startInteractiveButton.enabled = canStart
        self.ui.closeInteractiveButton.enabled = session is not None
        for button in (self.ui.placePositiveButton, self.ui.placeNegativeButton, self.ui.updateInteractiveButton,
                       self.ui.undoInteractiveButton, self.ui.redoInteractiveButton, self.ui.acceptInteractiveButton,
                       self.ui.nextStructureButton, self.ui.sendBoxButton, self.ui.refineSegmentButton):
            button.enabled = session is not None
        self.showTeachRow()

"""CoralBay: segment and classify CT with the CoralBay foundation model, review, export.

The Slicer side of CoralBaySlicer, kept thin on purpose: it moves nodes to files and back, starts the
engine (`coralbay`, a Slicer-free package beside this file) in a background process, and shows the
results. The work itself (inference, metrics, difference maps, export formats) is the engine's;
the process, command-line, result-reading and dependency logic is in `CoralBaySlicerLib` (plain
Python, tested without Slicer).
"""

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Annotated, Optional, Union

import numpy as np
import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CoralBaySlicerLib import commands, coordinates, dependencies, models, paths, results, sample_data, segments
from coralbay.io.labels import LabelTable, label_table_path_for
from coralbay.phantom.tissues import PHANTOM_LABELS
from coralbay.vocabulary import JobState
from CoralBaySlicerLib.files import deliver
from CoralBaySlicerLib.interactive_session import (InteractiveSession, forget_scan, interact_argv, keep_scan,
                                                   proposal_sentence)
from CoralBaySlicerLib.jobs import Job, JobController
from CoralBaySlicerLib.process import EngineBusyError, EngineRunner

MODULE_DIR = pathlib.Path(__file__).resolve().parent


#
# CoralBaySlicer
#


class CoralBaySlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CoralBay")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CoralBaySlicer developers"]
        self.parent.helpText = _(
            "Segment and classify CT volumes with the CoralBay foundation model (a 3D Swin-UNETR "
            "encoder), review the result against a reference segmentation (metrics, difference maps) "
            "and export it (NIfTI, NRRD, .seg.nrrd, DICOM SEG, STL). The model runs in a background "
            "process: Slicer stays responsive and Cancel stops it at once.")
        self.parent.acknowledgementText = _(
            "The model follows the eva framework's Swin-UNETR encoder (kaiko-ai/eva) built from MONAI blocks.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the generated CT phantom in the Sample Data module (generated on first use)."""
    import SampleData

    icon = str(paths.resources_dir(MODULE_DIR) / "Icons" / "CoralBaySlicer.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=sample_data.SAMPLE_CATEGORY, sampleName=sample_data.SAMPLE_NAME,
        uris=[], fileNames=[], nodeNames=[], thumbnailFileName=icon,
        customDownloader=lambda source: loadPhantomSample())


_sampleLogic = None  # keeps the logic (and its poll timer) alive while the phantom is generated


def loadPhantomSample():
    """Sample Data's button: load the phantom, generating it in the background on first use."""
    global _sampleLogic
    _sampleLogic = _sampleLogic or CoralBaySlicerLogic()

    def done(job):
        if job.state == JobState.FAILED:
            slicer.util.errorDisplay(_("The CoralBay phantom could not be generated: {error}").format(error=job.error),
                                     detailedText=job.full_log())

    try:
        _sampleLogic.loadPhantom(onDone=done)
    except (EngineBusyError, ValueError, FileNotFoundError) as exc:
        slicer.util.errorDisplay(str(exc))


#
# Parameter node: every choice of the panel, saved with the scene.
#


@parameterNodeWrapper
class CoralBaySlicerParameterNode:
    """Node fields are Optional: Slicer's parameterNodeWrapper writes None as every node field's
    default, and its Union serializer refuses None unless the Union includes it."""

    inputVolume: Optional[vtkMRMLScalarVolumeNode]
    model: str = ""
    backbone: str = ""  # optional encoder weights: a file or a Hugging Face hub id (engine --backbone)
    structures: str = ""  # checked structure names, comma-separated; empty means all
    roi: Optional[vtkMRMLMarkupsROINode]
    point: Optional[vtkMRMLMarkupsFiducialNode]
    device: Annotated[str, Choice(list(commands.DEVICE_CHOICES))] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    segmentation: Optional[vtkMRMLSegmentationNode]
    reference: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]
    metricsTable: Optional[vtkMRMLTableNode]
    classificationTable: Optional[vtkMRMLTableNode]
    worstErrorRAS: str = ""  # "x,y,z" of the largest disagreement found by Compare
    exportFormat: Annotated[str, Choice(list(commands.EXPORT_FORMATS))] = "seg.nrrd"
    interactivePositive: Optional[vtkMRMLMarkupsFiducialNode]  # include clicks of the Interactive section
    interactiveNegative: Optional[vtkMRMLMarkupsFiducialNode]  # exclude clicks
    interactiveStrokes: Optional[vtkMRMLSegmentationNode]  # painted strokes
    interactivePropose: bool = True  # a structure starts from the engine's automatic proposal, if any
    proposeWith: str = ""  # a segmentation model proposing structures (engine --propose-with); "": examples only
    exportFolder: pathlib.Path = pathlib.Path.home()


#
# Widget
#


class CoralBaySlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(paths.resources_dir(MODULE_DIR) / "UI" / "CoralBaySlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CoralBaySlicerLogic()
        self.logic.progressCallback = self.onProgress
        self.logic.logCallback = self.onLog
        self.logic.finishedCallback = self.onJobFinished

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.structuresListWidget.connect("itemChanged(QListWidgetItem*)", self.onStructuresChanged)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.classifyButton.connect("clicked(bool)", self.onClassify)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.jumpToWorstErrorButton.connect("clicked(bool)", self.onJumpToWorstError)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantom)
        self.setupInteractive()

        self.refreshModels()
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.closeInteractive()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.closeInteractive()  # its volume and segmentation are about to go
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode: Optional[CoralBaySlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.selectModel(self._parameterNode.model)
            self.selectProposeWith()
            self.updateButtons()

    # -- models ------------------------------------------------------------------------------------

    def refreshModels(self) -> None:
        try:
            self._models = self.logic.availableModels()
        except Exception as exc:  # noqa: BLE001 - the panel must open even if the catalog is broken
            self._models = []
            self.onLog("error", _("The model catalog could not be read: {error}").format(error=exc))
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in self._models:
            combo.addItem(entry.display_name(), entry.name)
        combo.blockSignals(wasBlocked)
        # Proposals: from the accepted examples, or from a segmentation model (e.g. one taught here)
        combo = self.ui.proposeWithComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("accepted examples only"), "")
        for entry in self._models:
            if entry.segments:
                combo.addItem(entry.display_name(), entry.name)
        combo.blockSignals(wasBlocked)
        self.selectProposeWith()

    def selectProposeWith(self) -> None:
        combo = self.ui.proposeWithComboBox
        wasBlocked = combo.blockSignals(True)
        combo.setCurrentIndex(max(0, combo.findData(self._parameterNode.proposeWith) if self._parameterNode else 0))
        combo.blockSignals(wasBlocked)

    def onProposeWithChanged(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.proposeWith = self.ui.proposeWithComboBox.itemData(index) or ""

    def selectModel(self, name: str) -> None:
        index = self.ui.modelComboBox.findData(name) if name else -1
        if index < 0 and self._models:
            index = 0
        self.ui.modelComboBox.setCurrentIndex(index)
        self.onModelChanged(index)

    def currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def onModelChanged(self, index) -> None:
        entry = self.currentModel()
        if self._parameterNode and entry and self._parameterNode.model != entry.name:
            self._parameterNode.model = entry.name
            self._parameterNode.structures = ""
        checked = set(self._parameterNode.structures.split(",")) if self._parameterNode and self._parameterNode.structures else None
        listWidget = self.ui.structuresListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for name in (entry.structures if entry and entry.segments else []):
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if checked is None or name in checked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        self.updateButtons()

    def checkedStructures(self):
        listWidget = self.ui.structuresListWidget
        items = [listWidget.item(i) for i in range(listWidget.count)]
        return [item.text() for item in items if item.checkState() == qt.Qt.Checked]

    def onStructuresChanged(self, item=None) -> None:
        entry = self.currentModel()
        if self._parameterNode and entry:
            chosen = commands.selected_structures(entry.structures, self.checkedStructures())
            self._parameterNode.structures = "" if chosen is None else ",".join(chosen)

    def onAddModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a CoralBay model bundle folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be added."), waitCursor=True):
            entry = self.logic.addModel(folder)
            self.refreshModels()
            self.selectModel(entry.name)
            self.onLog("info", _("Added model {name}.").format(name=entry.name))

    # -- state of the buttons ------------------------------------------------------------------------

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self.logic.busy if self.logic else False
        entry = self.currentModel()
        haveInput = bool(p and p.inputVolume)
        self.ui.segmentButton.enabled = not busy and haveInput and bool(entry and entry.segments)
        self.ui.classifyButton.enabled = not busy and haveInput and bool(entry and entry.classifies)
        self.ui.compareButton.enabled = not busy and bool(p and p.segmentation and p.reference)
        self.ui.exportButton.enabled = not busy and bool(p and p.segmentation)
        self.ui.jumpToWorstErrorButton.enabled = bool(p and p.worstErrorRAS)
        self.ui.cancelButton.enabled = busy
        self.ui.installDependenciesButton.enabled = not busy
        self.ui.loadPhantomButton.enabled = not busy
        session = self.logic.interactive if self.logic else None
        self.ui.startInteractiveButton.enabled = haveInput and bool(entry and entry.segments)
        self.ui.closeInteractiveButton.enabled = session is not None
        for button in (self.ui.placePositiveButton, self.ui.placeNegativeButton, self.ui.updateInteractiveButton,
                       self.ui.undoInteractiveButton, self.ui.redoInteractiveButton, self.ui.acceptInteractiveButton):
            button.enabled = session is not None
        self.ui.cancelInteractiveButton.enabled = bool(session and session.session.busy)
        self.ui.teachModelButton.enabled = not busy and bool(entry and entry.segments)
        if p and p.metricsTable:
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)

    # -- progress reporting --------------------------------------------------------------------------

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onLog(self, level: str, message: str) -> None:
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.ui.logTextEdit.appendPlainText(prefix + message)
        if level in ("warning", "error"):
            self.ui.statusLabel.text = message

    def onJobFinished(self, job: Job) -> None:
        self.ui.progressBar.value = 100 if job.state == JobState.SUCCEEDED else 0
        if job.state == JobState.FAILED:
            self.ui.statusLabel.text = job.error or ""
            slicer.util.errorDisplay(_("CoralBay {purpose} failed: {error}").format(purpose=job.purpose, error=job.error),
                                     detailedText=job.full_log())
        elif job.state == JobState.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled.")
        self.updateButtons()

    def startJob(self, start) -> None:
        """Run `start()` (which starts a logic job), reporting refusals (busy, bad input) in one sentence."""
        self.ui.progressBar.value = 0
        try:
            start()
        except EngineBusyError as exc:
            slicer.util.warningDisplay(str(exc))
        except (ValueError, FileNotFoundError, dependencies.DependencyError) as exc:
            slicer.util.errorDisplay(str(exc))
        self.updateButtons()

    def dependenciesReady(self) -> bool:
        """Offer to install what the engine still needs; False if the user declines or it fails."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("CoralBay needs these Python packages in Slicer: {names}. Install them now? "
                  "(This needs a network connection and may take several minutes.)").format(names=", ".join(missing)),
                _("Install CoralBay dependencies")):
            return False
        self.onInstallDependencies()
        return not self.logic.missingDependencies()

    # -- actions --------------------------------------------------------------------------------------

    def onSegment(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        structures = p.structures.split(",") if p.structures else None
        self.startJob(lambda: self.logic.segment(
            p.inputVolume, p.model, device=p.device, overlap=p.overlap, roiNode=p.roi, structures=structures,
            backbone=p.backbone, outputSegmentation=p.segmentation, onDone=self.onSegmentDone))

    def onSegmentDone(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            self._parameterNode.segmentation = job.value

    def onClassify(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        self.startJob(lambda: self.logic.classify(p.inputVolume, p.model, device=p.device, pointNode=p.point,
                                                  backbone=p.backbone, onDone=self.onClassifyDone))

    def onClassifyDone(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            tableNode, classification = job.value
            self._parameterNode.classificationTable = tableNode
            self.ui.classificationLabel.text = classification.summary()

    def onCompare(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        self.startJob(lambda: self.logic.compare(p.segmentation, p.reference, imageVolume=p.inputVolume,
                                                 onDone=self.onCompareDone))

    def onCompareDone(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            review = job.value
            self._parameterNode.metricsTable = review.metricsTable
            worst = review.worstErrorRAS
            self._parameterNode.worstErrorRAS = "" if worst is None else coordinates.format_coordinates(worst)
            self.ui.metricsTableView.setMRMLTableNode(review.metricsTable)

    def onJumpToWorstError(self) -> None:
        text = self._parameterNode.worstErrorRAS
        if text:
            self.logic.jumpToPosition([float(v) for v in text.split(",")])

    def onExport(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        self.startJob(lambda: self.logic.export(p.segmentation, p.exportFormat, p.exportFolder,
                                                referenceVolume=p.inputVolume, onDone=self.onExportDone))

    def onExportDone(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            self.onLog("info", _("Exported to {path}").format(path=job.value))

    def onLoadPhantom(self) -> None:
        def start():
            loaded = self.logic.loadPhantom(onDone=self.onPhantomLoaded)
            if isinstance(loaded, tuple):  # it was in the cache: loaded at once
                self.usePhantom(*loaded)
        self.startJob(start)

    def onPhantomLoaded(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            self.usePhantom(*job.value)

    def usePhantom(self, ctNode, truthNode) -> None:
        self._parameterNode.inputVolume = ctNode
        self._parameterNode.reference = truthNode

    def onCancel(self) -> None:
        self.logic.cancel()
        self.updateButtons()

    # -- interactive segmentation ---------------------------------------------------------------------

    def setupInteractive(self) -> None:
        self.ui.structureComboBox.addItems([label.name for label in PHANTOM_LABELS])
        self.ui.structureComboBox.setCurrentIndex(-1)
        # picking a structure (or Enter after typing one) starts it: its proposal shows before any click
        self.ui.structureComboBox.connect("activated(int)", self.onStructureChosen)
        self.ui.proposeWithComboBox.connect("currentIndexChanged(int)", self.onProposeWithChanged)
        self.logic.interactiveCallback = self.onInteractiveEvents
        self.ui.startInteractiveButton.connect("clicked(bool)", self.onStartInteractive)
        self.ui.closeInteractiveButton.connect("clicked(bool)", self.onCloseInteractive)
        self.ui.placePositiveButton.connect("clicked(bool)", lambda checked=False: self.onPlacePoint(True))
        self.ui.placeNegativeButton.connect("clicked(bool)", lambda checked=False: self.onPlacePoint(False))
        self.ui.updateInteractiveButton.connect("clicked(bool)", self.onUpdateInteractive)
        self.ui.undoInteractiveButton.connect("clicked(bool)", lambda checked=False: self.interactiveAction(self.logic.interactiveUndo))
        self.ui.redoInteractiveButton.connect("clicked(bool)", lambda checked=False: self.interactiveAction(self.logic.interactiveRedo))
        self.ui.acceptInteractiveButton.connect("clicked(bool)", lambda checked=False: self.interactiveAction(self.logic.interactiveAccept))
        self.ui.cancelInteractiveButton.connect("clicked(bool)", self.onCancelInteractive)
        self.ui.teachModelButton.connect("clicked(bool)", self.onTeachModel)

    def interactiveAction(self, action) -> None:
        """Run a logic request, reporting a refusal (no session, no structure, bad input) in one sentence."""
        try:
            action()
        except (ValueError, FileNotFoundError) as exc:
            slicer.util.errorDisplay(str(exc))
        self.updateButtons()

    def onStartInteractive(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode

        def start():
            self.logic.startInteractive(p.inputVolume, p.model, outputSegmentation=p.segmentation, device=p.device,
                                        proposeWith=p.proposeWith)
            p.segmentation = self.logic.interactive.segmentation
            for field, name in (("interactivePositive", "include"), ("interactiveNegative", "exclude")):
                if getattr(p, field) is None:
                    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                    setattr(p, field, node)
            self.observeInteractivePoints()
            self.ui.interactiveStatusLabel.text = _("Opening the scan...")
        self.interactiveAction(start)

    def observeInteractivePoints(self) -> None:
        """Send each point as soon as it is placed: the answer updates after every click."""
        p = self._parameterNode
        for node in (p.interactivePositive, p.interactiveNegative):
            if node is not None and not self.hasObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced):
                self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)

    def onPointPlaced(self, caller=None, event=None) -> None:
        if self.logic.interactive and self.logic.interactive.structure:
            self.interactiveAction(self.sendPoints)

    def ensureStructure(self) -> None:
        name = self.ui.structureComboBox.currentText.strip()
        state = self.logic.interactive
        if state is not None and state.structure != name:
            self.logic.startStructure(name, propose=self._parameterNode.interactivePropose)

    def onStructureChosen(self, index=None) -> None:
        if self.logic.interactive and self.ui.structureComboBox.currentText.strip():
            self.interactiveAction(self.ensureStructure)

    def sendPoints(self) -> None:
        self.ensureStructure()
        p = self._parameterNode
        if p.interactivePositive is not None:
            self.logic.addInteractivePoints(p.interactivePositive, True)
        if p.interactiveNegative is not None:
            self.logic.addInteractivePoints(p.interactiveNegative, False)

    def onPlacePoint(self, positive: bool) -> None:
        p = self._parameterNode
        node = p.interactivePositive if positive else p.interactiveNegative
        if node is None:
            slicer.util.errorDisplay(_("Start an interactive session first."))
            return
        self.observeInteractivePoints()
        markups = slicer.modules.markups.logic()
        markups.SetActiveList(node)
        markups.StartPlaceMode(False)  # one point per click of the button

    def onUpdateInteractive(self) -> None:
        def update():
            self.sendPoints()
            strokes = self._parameterNode.interactiveStrokes
            if strokes is not None:
                segmentation = strokes.GetSegmentation()
                for index in range(segmentation.GetNumberOfSegments()):
                    segment = segmentation.GetNthSegment(index)
                    positive = not segment.GetName().lower().startswith(("exclude", "negative", "-"))
                    self.logic.addInteractiveStroke(strokes, segmentation.GetNthSegmentID(index), positive)
        self.interactiveAction(update)

    def onTeachModel(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        name = self.ui.teachNameLineEdit.text.strip()
        self.startJob(lambda: self.logic.teachModel(name, p.model, device=p.device, onDone=self.onTeachDone))

    def onTeachDone(self, job: Job) -> None:
        if job.state == JobState.SUCCEEDED:
            self._parameterNode.proposeWith = job.value  # the next session starts structures from it
            self.refreshModels()
            self.onLog("info", _("Taught the model {name}; it is in the model list and proposes the structures it "
                                 "knows in the next interactive session (Propose with).").format(name=job.value))

    def onCancelInteractive(self) -> None:
        self.logic.cancelInteractive()
        self.ui.interactiveStatusLabel.text = _("Cancelled.")
        self.updateButtons()

    def onCloseInteractive(self) -> None:
        self.logic.closeInteractive()
        self.ui.interactiveStatusLabel.text = _("No session.")
        self.updateButtons()

    def onInteractiveEvents(self, events) -> None:
        for event in events:
            kind, request = event.get("event"), event.get("request")
            if kind == "result" and event.get("mask"):
                self.ui.interactiveStatusLabel.text = proposal_sentence(event) or _(
                    "{name}: {ml} ml (answer {n}).").format(name=event.get("name"), ml=event.get("volume_ml"),
                                                           n=event.get("answer"))
            elif kind == "result" and request == "start":
                self.ui.interactiveStatusLabel.text = _("{name}: no proposal; place points.").format(
                    name=event.get("name"))
            elif kind == "result" and request == "accept":
                self.ui.interactiveStatusLabel.text = _("Accepted {name}.").format(name=event.get("name"))
                self.ui.structureComboBox.setCurrentIndex(-1)
                for node in (self._parameterNode.interactivePositive, self._parameterNode.interactiveNegative):
                    if node is not None:
                        node.RemoveAllControlPoints()
            elif kind == "result" and request == "open":
                self.ui.interactiveStatusLabel.text = _("Ready: name a structure and place points.")
            elif kind == "error":
                self.ui.interactiveStatusLabel.text = str(event.get("message", ""))
            elif kind == "progress":
                self.ui.interactiveStatusLabel.text = str(event.get("message", ""))
        self.updateButtons()

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing CoralBay's dependencies failed."), waitCursor=True):
            summary = self.logic.installDependencies()
            self.onLog("info", summary)
        self.updateDependencyStatus()

    def updateDependencyStatus(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.dependencyStatusLabel.text = (
            _("All dependencies are installed.") if not missing
            else _("Missing: {names} (installed on first use, after you confirm).").format(names=", ".join(missing)))


#
# Logic
#


def _nodeIDs() -> set:
    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _removeNodesAddedSince(before: set, keep=None) -> None:
    """Remove every node added to the scene since `before` (node IDs), except `keep` and its display
    and storage nodes. A node already taken away with another is skipped: Slicer's Data module
    removes a node's display and storage nodes with it."""
    scene = slicer.mrmlScene
    kept = set()
    if keep is not None:
        kept = {keep.GetID()} | {keep.GetNthDisplayNodeID(i) for i in range(keep.GetNumberOfDisplayNodes())}
        if keep.GetStorageNodeID():
            kept.add(keep.GetStorageNodeID())
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in [n for n in added if n is not None and n.GetID() not in before and n.GetID() not in kept]:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)


@contextlib.contextmanager
def _sceneUnchanged():
    """Remove, on leaving, every node added meanwhile (temporary nodes and those Slicer adds with them)."""
    before = _nodeIDs()
    try:
        yield
    finally:
        _removeNodesAddedSince(before)


def _chosenTerminology(segment) -> Optional[str]:
    """The segment's terminology entry, or None when nobody chose one: Slicer gives every new segment
    a default entry (Tissue / Tissue), which is not a code for the structure."""
    entry = vtk.reference("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), entry):
        return None
    fresh, default = slicer.vtkSegment(), vtk.reference("")
    fresh.GetTag(fresh.GetTerminologyEntryTagName(), default)
    return None if segments.is_unset_terminology(str(entry), str(default)) else str(entry)


class Review:
    """What Compare puts into the scene: metrics table, difference segmentation (false positive,
    false negative, mismatch), signed surface-distance volume, and the worst error's position (RAS)."""

    def __init__(self, metricsTable, differenceSegmentation, distanceVolume, worstErrorRAS) -> None:
        self.metricsTable = metricsTable
        self.differenceSegmentation = differenceSegmentation
        self.distanceVolume = distanceVolume
        self.worstErrorRAS = worstErrorRAS


class _InteractiveState:
    """The interactive session of a logic: its engine process, folder, scan file and examples folder, output segmentation,
    the structure in progress (name, colour, terminology), its preview segment, the control points
    already sent (markups node ID -> control point IDs) and answers not yet collected by `waitInteractive`."""

    def __init__(self, session, folder, volume, segmentation, scan, examples) -> None:
        self.session = session
        self.folder = folder
        self.scan = scan            # the scan file the engine opened (kept beside the examples)
        self.examples = examples
        self.volume = volume
        self.segmentation = segmentation
        self.structure: Optional[str] = None
        self.color = (1.0, 1.0, 0.0)
        self.terminology: Optional[str] = None
        self.previewId: Optional[str] = None
        self.sentPoints: dict = {}
        self.strokes = 0
        self.answers: dict = {}
        self.restoring: dict = {}  # "labels" request id -> {name: value} of restored structures to import


class CoralBaySlicerLogic(ScriptedLoadableModuleLogic):
    """Runs the engine on scene nodes. Usable from scripts without the widget:

        logic = CoralBaySlicerLogic()
        logic.segment(volumeNode, "demo-phantom-seg")
        segmentationNode = logic.wait().value
    """

    # Slicer's Python launcher; a Python with the engine's dependencies may be set instead.
    engineExecutable = shutil.which("PythonSlicer")
    # One engine run at a time in the whole application (shared by every logic instance).
    _runner: Optional[EngineRunner] = None
    POLL_INTERVAL_MS = 100

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.progressCallback = None
        self.logCallback = None
        self.finishedCallback = None
        self._onDone = None
        self.jobs = JobController(self.runner(), on_progress=self._progress, on_log=self._log,
                                  on_finished=self._finished)
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.poll)
        self.interactive: Optional[_InteractiveState] = None
        self.interactiveCallback = None  # called with the events of each poll that had some
        self.interactiveTimer = qt.QTimer()
        self.interactiveTimer.setInterval(self.POLL_INTERVAL_MS)
        self.interactiveTimer.connect("timeout()", self.pollInteractive)

    @classmethod
    def runner(cls) -> EngineRunner:
        if cls._runner is None or cls._runner.python != str(cls.engineExecutable):
            if not cls.engineExecutable:
                raise FileNotFoundError("Slicer's Python launcher (PythonSlicer) was not found.")
            cls._runner = EngineRunner(cls.engineExecutable, paths.engine_dir(MODULE_DIR),
                                       base_env=slicer.util.startupEnvironment(),
                                       temp_root=os.path.join(slicer.app.temporaryPath, "CoralBay"))
        return cls._runner

    def getParameterNode(self):
        return CoralBaySlicerParameterNode(super().getParameterNode())

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    # -- models and dependencies ---------------------------------------------------------------------

    def availableModels(self):
        return models.list_models()

    def addModel(self, bundleFolder: str):
        return models.add_model(bundleFolder)

    def missingDependencies(self):
        missing = ["PyTorch"] if dependencies.torch_missing() else []
        missing += [r.pip for r in dependencies.missing_requirements()]
        missing += [f"{m} (part of Slicer)" for m in dependencies.missing_from_slicer()]
        return missing

    def installDependencies(self) -> str:
        """Install PyTorch (PyTorch extension) and the pinned packages; return a GPU sentence."""
        broken = dependencies.missing_from_slicer()
        if broken:
            raise dependencies.DependencyError(
                f"This Slicer lacks its own {', '.join(broken)}; reinstall Slicer.")
        if dependencies.torch_missing():
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise dependencies.DependencyError(
                    "CoralBay needs the PyTorch extension: install it from the Extensions Manager, "
                    "restart Slicer and try again.") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT) is None:
                raise dependencies.DependencyError("PyTorch could not be installed.")
        missing = dependencies.missing_requirements()
        if missing:
            self._pipInstall(missing)
        import torch

        return dependencies.gpu_summary(torch)

    def _pipInstall(self, requirements) -> None:
        """Dry-run pip first and refuse if it would touch Slicer's own packages, then install."""
        import subprocess

        with tempfile.TemporaryDirectory(prefix="CoralBay-pip-") as folder:
            constraintsFile = os.path.join(folder, "constraints.txt")
            reportFile = os.path.join(folder, "plan.json")
            with open(constraintsFile, "w", encoding="utf-8") as f:
                f.write(dependencies.constraints())
            installArgs = dependencies.pip_install_args(requirements, constraintsFile)
            plan = subprocess.run(
                [self.engineExecutable, "-m", "pip", *dependencies.pip_dry_run_args(installArgs, reportFile)],
                capture_output=True, text=True, env=slicer.util.startupEnvironment())
            if plan.returncode != 0:
                lines = (plan.stderr or plan.stdout).strip().splitlines()
                raise dependencies.DependencyError(
                    "pip cannot install CoralBay's packages: " + (lines[-1] if lines else f"exit code {plan.returncode}"))
            with open(reportFile, encoding="utf-8") as f:
                dependencies.check_plan(f.read())
            slicer.util.pip_install(installArgs)  # Slicer adds `install` itself

    # -- jobs ----------------------------------------------------------------------------------------

    def _start(self, purpose: str, writeInputs, readOutputs, onDone=None) -> Job:
        job = self.jobs.start(purpose, writeInputs, self._keepSceneOnFailure(readOutputs))
        self._onDone = onDone
        self.timer.start()
        return job

    def poll(self) -> None:
        self.jobs.poll()

    def wait(self, timeout: Optional[float] = None) -> Job:
        """Block until the current job has finished, keeping Slicer's GUI alive (scripts, tests)."""
        return self.jobs.wait(timeout, between_polls=slicer.app.processEvents)

    def cancel(self) -> None:
        self.jobs.cancel()

    def _progress(self, fraction: float, message: str) -> None:
        if self.progressCallback:
            self.progressCallback(fraction, message)

    def _log(self, level: str, message: str) -> None:
        getattr(logging, level if level in ("debug", "info", "warning", "error") else "info")(f"CoralBay: {message}")
        if self.logCallback:
            self.logCallback(level, message)

    def _finished(self, job: Job) -> None:
        self.timer.stop()
        onDone, self._onDone = self._onDone, None
        if onDone:
            onDone(job)
        if self.finishedCallback:
            self.finishedCallback(job)

    def _keepSceneOnFailure(self, readOutputs):
        """Wrap `readOutputs` so that nodes it added are removed again if it fails halfway."""
        def read(run):
            before = _nodeIDs()
            try:
                return readOutputs(run)
            except Exception:
                _removeNodesAddedSince(before)
                raise
        return read

    # -- segment -------------------------------------------------------------------------------------

    def segment(self, inputVolume, model: str, device: str = "auto", overlap: Optional[float] = 0.5,
                roiNode=None, structures=None, backbone: str = "", outputSegmentation=None, onDone=None) -> Job:
        """Segment `inputVolume` with a segmentation model; the job's value is the segmentation node.

        `backbone` optionally replaces the bundle's encoder weights (a file or a hub id)."""
        self._checkInputVolume(inputVolume)
        roi = self._roiBoxLPS(roiNode, inputVolume) if roiNode else None
        args = dict(device=device, overlap=overlap, roi_lps=roi, structures=structures, backbone=backbone)
        name = f"{inputVolume.GetName()} {model}"

        def writeInputs(folder):
            source = folder / "input.nrrd"
            self._writeVolume(inputVolume, source)
            return commands.segment_args(source, model, folder / "labels.nii.gz", **args)

        def readOutputs(run):
            labelsFile = results.output_path(run.result, "labels", run.folder / "labels.nii.gz")
            node = self._importLabelMap(labelsFile, name, inputVolume, outputSegmentation)
            node.CreateClosedSurfaceRepresentation()
            slicer.util.setSliceViewerLayers(background=inputVolume)
            return node

        return self._start("segmentation", writeInputs, readOutputs, onDone)

    # -- classify ------------------------------------------------------------------------------------

    def classify(self, inputVolume, model: str, device: str = "auto", pointNode=None, backbone: str = "",
                 onDone=None) -> Job:
        """Classify the scan (or the region around the point's first control point).

        The job's value is (table node, results.Classification)."""
        self._checkInputVolume(inputVolume)
        point = self._pointLPS(pointNode, inputVolume) if pointNode else None

        def writeInputs(folder):
            source = folder / "input.nrrd"
            self._writeVolume(inputVolume, source)
            return commands.classify_args(source, model, folder / "report.json", device=device, point_lps=point,
                                          backbone=backbone)

        def readOutputs(run):
            report = results.read_classification(results.output_path(run.result, "report", run.folder / "report.json"))
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{inputVolume.GetName()} {model} classes")
            self._fillTable(table, ["class", "probability"], [[name, p] for name, p in report.rows])
            return table, report

        return self._start("classification", writeInputs, readOutputs, onDone)

    # -- compare -------------------------------------------------------------------------------------

    def compare(self, segmentation, reference, imageVolume=None, onDone=None) -> Job:
        """Compare a segmentation with a reference (segmentation or label map node).

        The job's value is a `Review`: metrics table, difference segmentation, surface-distance
        volume and the position of the worst error (RAS)."""
        if segmentation is None or reference is None:
            raise ValueError("Choose both a segmentation and a reference to compare.")
        geometry = imageVolume or self._referenceVolume(segmentation)
        label = f"{segmentation.GetName()} vs {reference.GetName()}"

        def writeInputs(folder):
            prediction = folder / "prediction.nrrd"
            self._writeSegmentationAsLabelMap(segmentation, prediction, geometry)
            referenceFile = folder / "reference.nrrd"
            if reference.IsA("vtkMRMLSegmentationNode"):
                self._writeSegmentationAsLabelMap(reference, referenceFile, geometry)
            else:
                # A label map volume carries only values (its colour names are usually Slicer's
                # generic table), so the engine matches its structures by label value.
                self._writeVolume(reference, referenceFile)
            image = None
            if imageVolume is not None:
                image = folder / "image.nrrd"
                self._writeVolume(imageVolume, image)
            return commands.compare_args(prediction, referenceFile, folder / "review", image=image)

        def readOutputs(run):
            review = run.folder / "review"
            metrics = results.read_metrics(review / "metrics.json")
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{label} metrics")
            self._fillTable(table, metrics.columns, metrics.rows)
            difference = self._importLabelMap(review / "difference.nii.gz", f"{label} difference", geometry)
            display = difference.GetDisplayNode()
            for hidden in results.DIFFERENCE_HIDDEN:
                segmentId = difference.GetSegmentation().GetSegmentIdBySegmentName(hidden)
                if segmentId and display:
                    display.SetSegmentVisibility(segmentId, False)
            distance = self._loadDistanceMap(review / "surface_distance.nii.gz", f"{label} surface distance (mm)")
            return Review(table, difference, distance, metrics.worst_error_ras)

        return self._start("comparison", writeInputs, readOutputs, onDone)

    def jumpToPosition(self, positionRAS) -> None:
        """Centre every slice view on a position (RAS), e.g. the worst error found by Compare."""
        x, y, z = (float(v) for v in positionRAS)
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)

    # -- export --------------------------------------------------------------------------------------

    def export(self, segmentation, fmt: str, folder, referenceVolume=None, onDone=None) -> Job:
        """Export a segmentation with the engine; the job's value is the written path."""
        if segmentation is None:
            raise ValueError("Choose a segmentation to export.")
        if not folder or not pathlib.Path(folder).is_dir():
            raise ValueError(f"The export folder {folder} does not exist.")
        geometry = referenceVolume or self._referenceVolume(segmentation)
        outputName = commands.export_file_name(segmentation.GetName(), fmt)
        dicomFiles = self._dicomFiles(geometry) if fmt == "dicom-seg" else None
        if fmt == "dicom-seg" and not dicomFiles:
            raise ValueError("DICOM SEG export needs a reference CT loaded from Slicer's DICOM database.")

        def writeInputs(runFolder):
            labels = runFolder / "labels.nrrd"
            self._writeSegmentationAsLabelMap(segmentation, labels, geometry)
            series = self._linkFiles(dicomFiles, runFolder / "dicom") if dicomFiles else None
            (runFolder / "export").mkdir()
            return commands.export_args(labels, fmt, runFolder / "export" / outputName, dicom_series=series)

        def readOutputs(run):
            return deliver(run.folder / "export" / outputName, pathlib.Path(folder) / outputName)

        return self._start("export", writeInputs, readOutputs, onDone)

    # -- sample data ---------------------------------------------------------------------------------

    def loadPhantom(self, seed: int = sample_data.PHANTOM_SEED, onDone=None):
        """Load the generated phantom (CT and true segmentation), generating it on first use.

        Returns the job generating it (its value is (CT node, truth segmentation)), or, when it is
        already in the cache, that pair at once."""
        cache = slicer.app.cachePath
        ct, truth = sample_data.phantom_files(cache, seed)
        if sample_data.phantom_cached(cache, seed):
            return self._loadPhantomNodes(ct, truth)

        def writeInputs(folder):
            return commands.phantom_args(seed, folder / ct.name, folder / truth.name,
                                         spacing_mm=sample_data.PHANTOM_SPACING_MM,
                                         direction=sample_data.PHANTOM_DIRECTION)

        def readOutputs(run):
            for produced in (run.folder / ct.name, run.folder / truth.name):
                deliver(produced, ct.parent / produced.name)
                table = label_table_path_for(produced)
                if table.is_file():
                    deliver(table, ct.parent / table.name)
            return self._loadPhantomNodes(ct, truth)

        return self._start("phantom generation", writeInputs, readOutputs, onDone)

    def _loadPhantomNodes(self, ctFile, truthFile):
        ctNode = slicer.util.loadVolume(str(ctFile), {"name": sample_data.CT_NODE_NAME})
        truthNode = self._importLabelMap(truthFile, sample_data.TRUTH_NODE_NAME, ctNode)
        return ctNode, truthNode

    # -- interactive segmentation ---------------------------------------------------------------------
    #
    # One long-lived `coralbay interact` process (CoralBaySlicerLib.interactive_session) per logic:
    # requests return at once, `pollInteractive` (the interactive timer) applies the answers. The
    # answer of the structure in progress is one preview segment of the output segmentation, replaced
    # in place after each interaction; Accept turns it into a named segment with colour and terminology.
    # Accepted segments are never touched again.

    PREVIEW_SUFFIX = " (preview)"
    ACCEPTED_TAG = "CoralBay.Interactive"  # segment tag: "preview" or "accepted"

    @staticmethod
    def examplesFolder() -> pathlib.Path:
        """Where accepted structures are kept as examples (for restarts and Teach model)."""
        return pathlib.Path(slicer.app.cachePath) / "CoralBay" / "interactive-examples"

    def teachModel(self, name: str, model: str, device: str = "auto", examplesFolder=None, steps=None,
                   onDone=None) -> Job:
        """Teach a segmentation model from the accepted structures (`coralbay teach`) as a background
        job; the engine adds it to the catalog, so it is in `availableModels()` when the job succeeds.
        The job's value is the new model's name."""
        examples = pathlib.Path(examplesFolder or self.examplesFolder())
        if not any(examples.glob("*/example.json")):
            raise ValueError("There are no accepted structures to teach from yet; accept structures in the "
                             "Interactive section first.")
        if any(entry.name == (name or "").strip() for entry in self.availableModels()):
            raise ValueError(f"A model named {name.strip()} is already in the catalog; choose another name.")

        def writeInputs(folder):
            return commands.teach_args(examples, model, name, device=device, steps=steps)

        def readOutputs(run):
            return name.strip()

        return self._start("teaching", writeInputs, readOutputs, onDone)

    def startInteractive(self, inputVolume, model: str, outputSegmentation=None, device: str = "auto",
                         examplesFolder=None, proposeWith: str = ""):
        """Start a session on `inputVolume` (written to the session's folder); returns the request id
        of the scan's opening. The output segmentation is created when none is given. `proposeWith`:
        a segmentation model (e.g. one taught with `teachModel`) whose segmentation starts each
        structure it knows (engine `--propose-with`); otherwise proposals come from accepted examples."""
        self._checkInputVolume(inputVolume)
        if not model:
            raise ValueError("Choose a model for interactive segmentation.")
        self.closeInteractive()
        runner = self.runner()
        root = runner.temp_root or pathlib.Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = pathlib.Path(tempfile.mkdtemp(prefix="CoralBay-interactive-", dir=str(root)))
        examples = pathlib.Path(examplesFolder or self.examplesFolder())
        try:
            self._writeVolume(inputVolume, folder / "input.nrrd")
            scan = keep_scan(folder / "input.nrrd", examples)  # outlives the session if work is accepted on it
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Features cached across sessions: the next session restores the examples of earlier scans from them.
        cache = pathlib.Path(slicer.app.cachePath) / "CoralBay" / "feature-cache"
        argv = interact_argv(runner.python, model, folder / "out", examples, device=device, cache_dir=cache,
                             propose_with=proposeWith)
        session = InteractiveSession(argv, env=runner.environment(), cwd=folder)
        try:
            session.start()
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            forget_scan(scan, examples)
            raise
        if outputSegmentation is None:
            outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                    f"{inputVolume.GetName()} interactive")
            outputSegmentation.CreateDefaultDisplayNodes()
        outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        outputSegmentation.CreateClosedSurfaceRepresentation()  # the 3D view follows each answer
        self.interactive = _InteractiveState(session, folder, inputVolume, outputSegmentation, scan, examples)
        self.interactiveTimer.start()
        return self._interactiveRequest("open", image=str(scan))

    def startStructure(self, name: str, terminologyEntry: Optional[str] = None, color=None, propose: bool = True):
        """Begin a structure; colour and terminology default to those of a known structure of that name.
        A name used by a segment of the output segmentation is refused (accepted work is never overwritten).
        `propose`: the engine answers at once with its automatic proposal when it has one (from the
        --propose-with model, or from the structure accepted on earlier scans); it becomes the preview
        segment like any answer, and the result's `proposed_by` says where it came from."""
        state = self._interactiveState()
        name = (name or "").strip()
        if not name:
            raise ValueError("Name the structure to segment.")
        existing = state.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        if existing:
            raise ValueError(f"The segmentation {state.segmentation.GetName()} already has a segment named {name}; "
                             "choose another name.")
        knownColor, knownEntry = segments.structure_appearance(name, PHANTOM_LABELS, state.segmentation.GetSegmentation().GetNumberOfSegments())
        if state.previewId and state.segmentation.GetSegmentation().GetSegment(state.previewId):
            # the structure named before was not accepted: its preview goes (never an accepted segment)
            state.segmentation.GetSegmentation().RemoveSegment(state.previewId)
        state.previewId = None
        state.structure = name
        state.color = tuple(color) if color is not None else knownColor
        state.terminology = terminologyEntry or knownEntry
        state.sentPoints = {}
        return self._interactiveRequest("start", name=name, propose=bool(propose))

    def addInteractivePoints(self, markupsNode, positive: bool = True) -> list:
        """Send the control points of `markupsNode` not sent yet (positive or negative clicks)."""
        state = self._interactiveState(needStructure=True)
        if markupsNode is None:
            raise ValueError("Choose a point list for the clicks.")
        sent = state.sentPoints.setdefault(markupsNode.GetID(), set())
        box = self._volumeBoxLPS(state.volume)
        fresh = []
        for index in range(markupsNode.GetNumberOfControlPoints()):
            pointId = markupsNode.GetNthControlPointID(index)
            if pointId in sent:
                continue
            ras = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(index, ras)
            lps = coordinates.ras_to_lps(ras)
            if not all(box[i] <= lps[i] <= box[i + 3] for i in range(3)):
                raise ValueError(f"The point {markupsNode.GetNthControlPointLabel(index)} lies outside the volume "
                                 f"{state.volume.GetName()}.")
            fresh.append((pointId, lps))
        ids = []
        for pointId, lps in fresh:
            sent.add(pointId)
            ids.append(self._interactiveRequest("point", lps=list(lps), positive=bool(positive)))
        return ids

    def addInteractiveStroke(self, segmentationNode, segmentId: str, positive: bool = True):
        """Send a painted segment as a scribble (written as a label map on the input volume's grid)."""
        state = self._interactiveState(needStructure=True)
        if segmentationNode is None or not segmentationNode.GetSegmentation().GetSegment(segmentId):
            raise ValueError("Choose the painted segment to send as a stroke.")
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, state.volume)
        if array is None or not array.any():
            raise ValueError(f"The segment {segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()} is empty: "
                             "paint a stroke first.")
        state.strokes += 1
        path = state.folder / f"stroke-{state.strokes}.nrrd"
        with _sceneUnchanged():
            labelMap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(state.volume, "CoralBay stroke")
            slicer.util.updateVolumeFromArray(labelMap, ((array > 0) * (1 if positive else 2)).astype(np.uint8))
            self._writeVolume(labelMap, path)
        return self._interactiveRequest("scribble", path=str(path), positive_value=1, negative_value=2)

    def interactiveUndo(self):
        return self._interactiveRequest("undo", name=self._interactiveState(needStructure=True).structure)

    def interactiveRedo(self):
        return self._interactiveRequest("redo", name=self._interactiveState(needStructure=True).structure)

    def interactiveAccept(self):
        return self._interactiveRequest("accept", name=self._interactiveState(needStructure=True).structure)

    def cancelInteractive(self) -> list:
        """Stop what the session is doing now (the engine is killed and restarted if it does not stop)."""
        return self.interactive.session.cancel() if self.interactive else []

    def closeInteractive(self) -> None:
        """End the session; accepted segments stay, the preview segment goes."""
        state, self.interactive = self.interactive, None
        self.interactiveTimer.stop()
        if state is None:
            return
        state.session.close()
        if state.previewId and state.segmentation.GetSegmentation().GetSegment(state.previewId):
            state.segmentation.GetSegmentation().RemoveSegment(state.previewId)
        shutil.rmtree(state.folder, ignore_errors=True)
        forget_scan(state.scan, state.examples)  # kept only while an accepted example refers to it

    def pollInteractive(self) -> list:
        """Apply the session's answers (timer); returns the events."""
        state = self.interactive
        if state is None:
            return []
        events = state.session.poll()
        for event in events:
            kind = event.get("event")
            if kind == "result" and event.get("mask"):
                if event.get("name") == state.structure:  # late answers for a structure left behind are dropped
                    self._showPreview(state, event)
                    if proposal_sentence(event):
                        self._log("info", proposal_sentence(event))
            elif kind == "result" and event.get("request") == "accept":
                self._acceptPreview(state, event)
            elif kind == "result" and event.get("request") == "open" and event.get("accepted"):
                self._requestRestored(state, event["accepted"])
            elif kind == "result" and str(event.get("id")) in state.restoring:
                self._importRestored(state, event, state.restoring.pop(str(event.get("id"))))
            elif kind == "error":
                self._log("error", str(event.get("message", "")))
                if event.get("request") == "start":
                    state.structure = None  # the engine refused the name: no structure in progress
            elif kind == "log":
                self._log(str(event.get("level", "info")), str(event.get("message", "")))
            elif kind == "progress":
                self._progress(float(event.get("fraction", 0.0) or 0.0), str(event.get("message", "")))
            if kind in ("result", "error") and event.get("id") is not None:
                state.answers[str(event["id"])] = event
        if events and self.interactiveCallback:
            self.interactiveCallback(events)
        return events

    def waitInteractive(self, requestId, timeout: float = 120.0) -> dict:
        """Poll until the answer to `requestId` (scripts, tests; the GUI's timer polls instead)."""
        deadline = time.monotonic() + timeout
        while True:
            self.pollInteractive()
            state = self._interactiveState()
            if str(requestId) in state.answers:
                return state.answers.pop(str(requestId))
            if time.monotonic() > deadline:
                raise TimeoutError(f"The interactive session did not answer within {timeout} s.")
            slicer.app.processEvents()
            time.sleep(0.02)

    def _interactiveState(self, needStructure: bool = False):
        if self.interactive is None:
            raise ValueError("Start an interactive session first.")
        if needStructure and not self.interactive.structure:
            raise ValueError("Name the structure to segment first.")
        return self.interactive

    def _interactiveRequest(self, kind: str, **fields) -> str:
        return self._interactiveState().session.request(kind, **fields)

    def _showPreview(self, state, event) -> None:
        """The answer's mask as the preview segment, replaced in place (same segment ID)."""
        with _sceneUnchanged():
            labelMap = slicer.util.loadLabelVolume(str(event["mask"]), {"show": False})
            array = slicer.util.arrayFromVolume(labelMap) > 0
        segmentation = state.segmentation.GetSegmentation()
        if not state.previewId or not segmentation.GetSegment(state.previewId):
            state.previewId = segmentation.AddEmptySegment("", f"{state.structure}{self.PREVIEW_SUFFIX}", state.color)
            segmentation.GetSegment(state.previewId).SetTag(self.ACCEPTED_TAG, "preview")
        slicer.util.updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), state.segmentation, state.previewId,
                                                         state.volume)

    def _acceptPreview(self, state, event) -> None:
        segment = state.segmentation.GetSegmentation().GetSegment(state.previewId) if state.previewId else None
        if segment is not None:
            segment.SetName(str(event["name"]))
            segment.SetColor(*state.color)
            segment.SetTag(self.ACCEPTED_TAG, "accepted")
            segment.SetTag(segments.LABEL_VALUE_TAG, str(event["value"]))
            if state.terminology:
                segment.SetTag(segment.GetTerminologyEntryTagName(), state.terminology)
        state.previewId, state.structure = None, None

    def _requestRestored(self, state, accepted: dict) -> None:
        """Structures accepted on this scan in an earlier session (restored by the engine from the
        examples folder) that the output segmentation lacks: fetch the engine's label map of them."""
        segmentation = state.segmentation.GetSegmentation()
        missing = {str(n): int(v) for n, v in accepted.items() if not segmentation.GetSegmentIdBySegmentName(str(n))}
        if missing:
            requestId = self._interactiveRequest("labels", path=str(state.folder / "restored.nii.gz"))
            state.restoring[requestId] = missing

    def _importRestored(self, state, event, missing: dict) -> None:
        """The restored structures as accepted segments (known colour and terminology, label value tag)."""
        with _sceneUnchanged():
            labelMap = slicer.util.loadLabelVolume(str(event["path"]), {"show": False})
            array = slicer.util.arrayFromVolume(labelMap).copy()  # the node goes on leaving
        segmentation = state.segmentation.GetSegmentation()
        for name, value in sorted(missing.items(), key=lambda item: item[1]):
            if segmentation.GetSegmentIdBySegmentName(name):
                continue
            color, entry = segments.structure_appearance(name, PHANTOM_LABELS, segmentation.GetNumberOfSegments())
            segmentId = segmentation.AddEmptySegment("", name, color)
            segment = segmentation.GetSegment(segmentId)
            segment.SetTag(self.ACCEPTED_TAG, "accepted")
            segment.SetTag(segments.LABEL_VALUE_TAG, str(value))
            if entry:
                segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
            slicer.util.updateSegmentBinaryLabelmapFromArray((array == value).astype(np.uint8), state.segmentation,
                                                             segmentId, state.volume)
        self._log("info", f"Restored the structures accepted earlier on this scan: {', '.join(sorted(missing))}.")

    # -- checks of the inputs (before anything starts) -----------------------------------------------

    @staticmethod
    def _checkInputVolume(volume) -> None:
        if volume is None:
            raise ValueError("Select an input volume.")
        if volume.GetImageData() is None:
            raise ValueError(f"The volume {volume.GetName()} has no image data.")

    @staticmethod
    def _volumeBoxLPS(volume):
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        return coordinates.ras_bounds_to_lps_box(bounds)

    def _roiBoxLPS(self, roiNode, volume):
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        box = coordinates.ras_bounds_to_lps_box(bounds)
        if not coordinates.boxes_overlap(box, self._volumeBoxLPS(volume)):
            raise ValueError(f"The region {roiNode.GetName()} lies outside the volume {volume.GetName()}.")
        return box

    def _pointLPS(self, pointNode, volume):
        if pointNode.GetNumberOfControlPoints() < 1:
            raise ValueError(f"The point list {pointNode.GetName()} has no points.")
        ras = [0.0, 0.0, 0.0]
        pointNode.GetNthControlPointPositionWorld(0, ras)
        lps = coordinates.ras_to_lps(ras)
        box = self._volumeBoxLPS(volume)
        if not all(box[i] <= lps[i] <= box[i + 3] for i in range(3)):
            raise ValueError(f"The point {pointNode.GetNthControlPointLabel(0)} lies outside the volume {volume.GetName()}.")
        return lps

    # -- nodes -> files ------------------------------------------------------------------------------

    @staticmethod
    def _writeVolume(volume, path) -> None:
        """Write a volume (or label map) node to `path` without changing the node's own storage."""
        with _sceneUnchanged():
            storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            storage.SetFileName(str(path))
            storage.UseCompressionOff()
            if not storage.WriteData(volume):
                raise ValueError(f"The volume {volume.GetName()} could not be written for the engine.")

    def _writeSegmentationAsLabelMap(self, segmentation, path, geometryVolume) -> None:
        """Segments as a label map on the reference grid, with its label table.

        Segments keep the label value they had in the engine's output (see `segments.export_values`);
        Slicer's export takes the values from a colour table matched by segment name. Every node this
        adds is removed again, also those Slicer adds itself (Slicer >= 5.10's export adds a colour
        table "<segmentation>_ColorTable" to the label map), whether the export succeeds or not."""
        with _sceneUnchanged():
            self._exportSegmentationAsLabelMap(segmentation, path, geometryVolume)

    def _exportSegmentationAsLabelMap(self, segmentation, path, geometryVolume) -> None:
        ids = vtk.vtkStringArray()
        segmentation.GetSegmentation().GetSegmentIDs(ids)
        if ids.GetNumberOfValues() == 0:
            raise ValueError(f"The segmentation {segmentation.GetName()} has no segments.")
        described, remembered = [], []
        for i in range(ids.GetNumberOfValues()):
            segment = segmentation.GetSegmentation().GetSegment(ids.GetValue(i))
            value = vtk.reference("")  # GetTag answers through a reference
            described.append((segment.GetName(), segment.GetColor(), _chosenTerminology(segment)))
            remembered.append(str(value) if segment.GetTag(segments.LABEL_VALUE_TAG, value) else None)
        table = segments.label_table_for_segments(described, segments.export_values(remembered))
        labelMap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode")
        colorNode.SetTypeToUser()
        colorNode.SetNumberOfColors(max(label.value for label in table) + 1)
        for (name, color, _term), label in zip(described, table):
            colorNode.SetColor(label.value, name, *color, 1.0)
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentation, ids, labelMap, geometryVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colorNode):
            raise ValueError(f"The segmentation {segmentation.GetName()} could not be exported as a label map.")
        self._writeVolume(labelMap, path)
        results.write_label_table(table, path)

    @staticmethod
    def _referenceVolume(segmentation):
        volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        if volume is None:
            raise ValueError(f"The segmentation {segmentation.GetName()} has no reference volume; select the input volume.")
        return volume

    @staticmethod
    def _dicomFiles(volume):
        uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split() if volume else []
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        files = [database.fileForInstance(uid) for uid in uids]
        return [f for f in files if f] or None

    @staticmethod
    def _linkFiles(files, folder: pathlib.Path) -> pathlib.Path:
        """Gather a DICOM series' files in one private folder (hard links where possible)."""
        folder.mkdir()
        for index, source in enumerate(files):
            target = folder / f"{index:05d}.dcm"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        return folder

    # -- files -> nodes ------------------------------------------------------------------------------

    def _importLabelMap(self, labelsFile, name: str, geometryVolume, segmentationNode=None):
        """Load an engine label map as segments with the label table's names, colours and terminology.

        The segmentation references `geometryVolume` (so Slicer's DICOM SEG export works) and is
        placed beside it in the subject hierarchy. With `segmentationNode`, its segments are replaced,
        but only once the import has succeeded. A label map without a label table (not written by the
        engine) gets generic names. Only the segmentation (with its display node) stays in the scene:
        the temporary label map and colour table go again, and a failed import leaves the scene as it was."""
        before = _nodeIDs()
        try:
            segmentationNode = self._importLabelMapNodes(labelsFile, name, geometryVolume, segmentationNode)
        except Exception:
            _removeNodesAddedSince(before)
            raise
        _removeNodesAddedSince(before, keep=segmentationNode)
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        volumeItem, segmentationItem = shNode.GetItemByDataNode(geometryVolume), shNode.GetItemByDataNode(segmentationNode)
        if volumeItem and segmentationItem:  # items are made by Slicer's subject hierarchy plugins
            shNode.SetItemParent(segmentationItem, shNode.GetItemParent(volumeItem))
        return segmentationNode

    def _importLabelMapNodes(self, labelsFile, name: str, geometryVolume, segmentationNode):
        labelMap = slicer.util.loadLabelVolume(str(labelsFile), {"name": f"{name} labels", "show": False})
        colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name} colors")
        imported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        try:
            try:
                described = results.label_map_segments(labelsFile)
            except results.ResultError:
                values = [int(v) for v in np.unique(slicer.util.arrayFromVolume(labelMap)) if v > 0]
                described = results.segments_from_table(LabelTable.generic(values))
            if not described:
                raise results.ResultError(f"The label map {pathlib.Path(labelsFile).name} has no structures.")
            colorNode.SetTypeToUser()
            colorNode.SetNumberOfColors(max(s.value for s in described) + 1)
            colorNode.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            for s in described:
                colorNode.SetColor(s.value, s.name, *s.color, 1.0)
            labelMap.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
            imported.CreateDefaultDisplayNodes()
            imported.SetReferenceImageGeometryParameterFromVolumeNode(geometryVolume)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMap, imported):
                raise results.ResultError(f"The label map {pathlib.Path(labelsFile).name} could not be imported.")
        finally:
            slicer.mrmlScene.RemoveNode(labelMap)  # Slicer's Data module removes its display and storage nodes
            slicer.mrmlScene.RemoveNode(colorNode)
        # Segments are matched by their label value, not by name or ID: segment IDs are random, and
        # Slicer names the only segment of a one-label map after the label map node.
        segmentation = imported.GetSegmentation()
        byValue = {s.value: s for s in described}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            s = byValue.get(segment.GetLabelValue())
            if s is None:
                continue
            segment.SetName(s.name)
            segment.SetColor(*s.color)
            segment.SetTag(segments.LABEL_VALUE_TAG, str(s.value))  # kept when written back for the engine
            if s.terminology:
                segment.SetTag(segment.GetTerminologyEntryTagName(), s.terminology)
        if segmentationNode is not None:
            segmentationNode.GetSegmentation().DeepCopy(segmentation)
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(geometryVolume)
            slicer.mrmlScene.RemoveNode(imported)
            return segmentationNode
        return imported

    def _loadDistanceMap(self, path, name: str):
        """The signed surface-distance map as a blue-red overlay in the slice views."""
        node = slicer.util.loadVolume(str(path), {"name": name, "show": False})
        self._forgetTemporaryFile(node)
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileDivergingBlueRed.txt")
        scalarRange = node.GetImageData().GetScalarRange()
        limit = max(abs(scalarRange[0]), abs(scalarRange[1]), 1.0)
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(-limit, limit)
        slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)
        return node

    @staticmethod
    def _forgetTemporaryFile(node) -> None:
        """Detach a node from the run's file (removed with the run), so Slicer saves it as new data."""
        storage = node.GetStorageNode()
        if storage is not None:
            node.SetAndObserveStorageNodeID(None)
            slicer.mrmlScene.RemoveNode(storage)

    @staticmethod
    def _fillTable(tableNode, columns, rows) -> None:
        """Fill a table node: the first column as text, the others as numbers."""
        table = tableNode.GetTable()
        for index, column in enumerate(columns):
            array = vtk.vtkStringArray() if index == 0 else vtk.vtkDoubleArray()
            array.SetName(column)
            for row in rows:
                array.InsertNextValue(str(row[index]) if index == 0 else float(row[index]))
            table.AddColumn(array)
        tableNode.Modified()


#
# Test (runs inside Slicer: see README, "Using the Slicer module")
#


class CoralBaySlicerTest(ScriptedLoadableModuleTest):
    """Phantom -> segment (demo bundle) -> Dice against the truth -> classify -> compare -> export."""

    SEGMENTATION_MODEL = "demo-phantom-seg"
    CLASSIFICATION_MODEL = "demo-phantom-cls"
    MINIMUM_DICE = 0.5  # the demo bundle is small; this only catches a broken pipeline (flipped axes...)
    TIMEOUT_S = 900

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CoralBaySlicerEndToEnd()
        self.setUp()
        self.test_CoralBaySlicerCancel()
        self.setUp()
        self.test_CoralBaySlicerInteractive()

    def _logic(self):
        logic = CoralBaySlicerLogic()
        missing = logic.missingDependencies()
        if missing:
            self.delayDisplay(f"Installing {', '.join(missing)}")
            self.delayDisplay(logic.installDependencies())
        return logic

    def _phantom(self, logic):
        loaded = logic.loadPhantom()
        if isinstance(loaded, Job):
            job = logic.wait(self.TIMEOUT_S)
            self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
            loaded = job.value
        return loaded

    def test_CoralBaySlicerEndToEnd(self):
        logic = self._logic()
        names = [m.name for m in logic.availableModels()]
        self.assertIn(self.SEGMENTATION_MODEL, names)
        ctNode, truthNode = self._phantom(logic)
        self.delayDisplay("Phantom loaded")

        logic.segment(ctNode, self.SEGMENTATION_MODEL)
        job = logic.wait(self.TIMEOUT_S)
        self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
        segmentationNode = job.value
        self.assertGreater(segmentationNode.GetSegmentation().GetNumberOfSegments(), 0)
        self.assertEqual(segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()), ctNode)
        self.delayDisplay("Segmented")

        logic.compare(segmentationNode, truthNode, imageVolume=ctNode)
        job = logic.wait(self.TIMEOUT_S)
        self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
        table = job.value.metricsTable.GetTable()
        dice = table.GetColumnByName("dice")
        self.assertIsNotNone(dice)
        segmented = {segmentationNode.GetSegmentation().GetNthSegment(i).GetName()
                     for i in range(segmentationNode.GetSegmentation().GetNumberOfSegments())}
        checked = 0
        for row in range(table.GetNumberOfRows()):
            name = table.GetValue(row, 0).ToString()
            if name in segmented:  # structures the model segments (the truth has more)
                self.assertGreaterEqual(dice.GetValue(row), self.MINIMUM_DICE, name)
                checked += 1
        self.assertGreater(checked, 0)
        self.assertIsNotNone(job.value.worstErrorRAS)
        logic.jumpToPosition(job.value.worstErrorRAS)
        self.delayDisplay("Compared")

        if self.CLASSIFICATION_MODEL in names:
            logic.classify(ctNode, self.CLASSIFICATION_MODEL)
            job = logic.wait(self.TIMEOUT_S)
            self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
            tableNode, classification = job.value
            self.assertAlmostEqual(sum(p for _name, p in classification.rows), 1.0, places=3)
            self.delayDisplay("Classified")

        folder = tempfile.mkdtemp(prefix="CoralBayTest-")
        try:
            logic.export(segmentationNode, "seg.nrrd", folder, referenceVolume=ctNode)
            job = logic.wait(self.TIMEOUT_S)
            self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
            exported = slicer.util.loadSegmentation(str(job.value))
            self.assertEqual(exported.GetSegmentation().GetNumberOfSegments(),
                             segmentationNode.GetSegmentation().GetNumberOfSegments())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Exported; test passed")

    def test_CoralBaySlicerCancel(self):
        logic = self._logic()
        ctNode, _truth = self._phantom(logic)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.segment(ctNode, self.SEGMENTATION_MODEL)
        folder = job.run.folder
        import time

        deadline = time.monotonic() + self.TIMEOUT_S
        while job.run.fraction == 0.0 and not job.finished and time.monotonic() < deadline:
            logic.poll()
            slicer.app.processEvents()
        logic.cancel()
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertFalse(folder.exists())
        self.assertFalse(logic.busy)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Cancel test passed")

    def test_CoralBaySlicerInteractive(self):
        """Clicks at the liver's centre as real control points, the engine process killed and restarted
        by the session, Accept giving a named segment with its terminology."""
        import signal

        logic = self._logic()
        ctNode, truthNode = self._phantom(logic)
        truth = truthNode.GetSegmentation()
        liverId = truth.GetSegmentIdBySegmentName("liver")
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(truthNode, liverId, ctNode) > 0
        opened = logic.startInteractive(ctNode, self.SEGMENTATION_MODEL)
        self.assertEqual(logic.waitInteractive(opened, self.TIMEOUT_S)["event"], "result")
        self.assertEqual(logic.waitInteractive(logic.startStructure("liver"), self.TIMEOUT_S)["event"], "result")
        k, j, i = (int(v) for v in np.argwhere(liver).mean(axis=0))
        ijkToRas = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(ijkToRas)
        ras = ijkToRas.MultiplyPoint([i, j, k, 1])[:3]
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
        points.AddControlPoint(list(ras))
        answer = logic.waitInteractive(logic.addInteractivePoints(points, True)[0], self.TIMEOUT_S)
        self.assertEqual(answer["event"], "result", answer.get("message"))
        os.kill(logic.interactive.session.pid, signal.SIGKILL)
        accepted = logic.waitInteractive(logic.interactiveAccept(), self.TIMEOUT_S)
        self.assertEqual(accepted["event"], "result", accepted.get("message"))
        self.assertEqual(logic.interactive.session.restarts, 1)
        output = logic.interactive.segmentation
        segmentId = output.GetSegmentation().GetSegmentIdBySegmentName("liver")
        self.assertTrue(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, ctNode) > 0
        dice = 2.0 * (mask & liver).sum() / max(1, mask.sum() + liver.sum())
        self.assertGreater(dice, 0.3)
        logic.closeInteractive()
        self.delayDisplay(f"Interactive test passed (Dice after one click {dice:.2f})")

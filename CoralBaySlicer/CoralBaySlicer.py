"""CoralBay: segment and classify CT with the CoralBay foundation model, review, export, and segment
interactively.

Slicer's four standard classes, short on purpose: the widget wires the panel's sections, the logic
composes the workflow families and is the scripting API. Where each panel behaviour lives (one hop
from the file names): `CoralBaySlicerScene/` (needs Slicer: engine jobs, scene guard, nodes to
files, files to nodes, tasks, interactive, install, the panel's model and interactive sections,
the self-test) and `CoralBaySlicerLib/` (Slicer-free: engine process, command lines, results,
dependencies). The work itself (inference, metrics, difference maps, export formats) is the engine's
(`coralbay`, beside this file), run in a background process.
"""

import pathlib
from typing import Annotated, Optional, Union

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
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from coralbay.vocabulary import JobState
from CoralBaySlicerLib import commands, coordinates, dependencies, paths, sample_data
from CoralBaySlicerLib.jobs import Job
from CoralBaySlicerLib.process import EngineBusyError
from CoralBaySlicerLib.remote_client import RemoteError
from CoralBaySlicerLib.remote_runner import ENGINE_CHOICES
from CoralBaySlicerScene import selftest
from CoralBaySlicerScene.engine_jobs import MODULE_DIR, EngineJobs
from CoralBaySlicerScene.engine_section import EngineSection
from CoralBaySlicerScene.install import InstallLogic
from CoralBaySlicerScene.interactive import InteractiveLogic
from CoralBaySlicerScene.interactive_section import InteractiveSection
from CoralBaySlicerScene.model_section import ModelSection
from CoralBaySlicerScene.tasks import Review, TaskLogic  # noqa: F401 (Review: scripting API)

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
    interactiveBox: Optional[vtkMRMLMarkupsROINode]  # a box drawn around the structure
    interactivePropose: bool = True  # a structure starts from the engine's automatic proposal, if any
    proposeWith: str = ""  # a segmentation model proposing structures (engine --propose-with); "": examples only
    taughtModel: str = ""  # the model taught last here: Teach model can build on it (engine teach --from)
    teachBuildOn: bool = False  # the next teach builds on taughtModel
    teachMinutes: Annotated[float, WithinRange(0.0, 600.0)] = 0.0  # its time budget (engine teach --minutes); 0: none
    exportFolder: pathlib.Path = pathlib.Path.home()
    # The Engine section (the token is not here: it stays in memory, see engine_section.py)
    engine: Annotated[str, Choice(list(ENGINE_CHOICES))] = "Local"
    remoteUrl: str = ""
    remoteCaFile: str = ""
    remoteFingerprint: str = ""


#
# Widget
#


class CoralBaySlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel's sections: models (model_section), segment / classify / compare / export /
    setup (here: one line each to the logic), interactive (interactive_section)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

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

        parameterNode = lambda: self._parameterNode  # noqa: E731
        self.models = ModelSection(self.ui, self.logic, parameterNode, self.onLog, self.updateButtons)
        self.interactive = InteractiveSection(self.ui, self.logic, parameterNode, lambda: self.engineReady(remote=True),
                                              self.updateButtons)
        self.engine = EngineSection(self.ui, self.logic, self.models.refresh)
        for button, slot in ((self.ui.segmentButton, self.onSegment), (self.ui.classifyButton, self.onClassify),
                             (self.ui.cancelButton, self.onCancel), (self.ui.compareButton, self.onCompare),
                             (self.ui.jumpToWorstErrorButton, self.onJumpToWorstError),
                             (self.ui.exportButton, self.onExport), (self.ui.loadPhantomButton, self.onLoadPhantom),
                             (self.ui.installDependenciesButton, self.onInstallDependencies),
                             (self.ui.teachModelButton, self.onTeachModel)):
            button.connect("clicked(bool)", lambda checked=False, slot=slot: slot())

        self.models.refresh()
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.interactive.removeShortcuts()
        self.interactive.stopObservingPoints()
        if self.logic:
            self.logic.closeInteractive()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.interactive.installShortcuts(slicer.util.mainWindow())

    def exit(self) -> None:
        self.interactive.removeShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.closeInteractive()  # its volume and segmentation are about to go
        self.interactive.stopObservingPoints()
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
            self.models.select(self._parameterNode.model)
            self.models.selectProposeWith()
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self.logic.busy if self.logic else False
        entry = self.models.current()
        haveInput = bool(p and p.inputVolume)
        segments = bool(entry and entry.segments)
        self.ui.segmentButton.enabled = not busy and haveInput and segments
        self.ui.classifyButton.enabled = not busy and haveInput and bool(entry and entry.classifies)
        self.ui.compareButton.enabled = not busy and bool(p and p.segmentation and p.reference)
        self.ui.exportButton.enabled = not busy and bool(p and p.segmentation)
        self.ui.jumpToWorstErrorButton.enabled = bool(p and p.worstErrorRAS)
        session = self.logic.interactive if self.logic else None
        self.ui.cancelButton.enabled = busy or bool(session and session.session.busy)  # the one Cancel
        self.ui.installDependenciesButton.enabled = not busy
        self.ui.loadPhantomButton.enabled = not busy
        self.ui.teachModelButton.enabled = not busy and segments
        self.interactive.updateButtons(canStart=haveInput and segments)
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

    def startJob(self, start, onDone=None, needsModel: bool = True, remote: bool = False, onFailed=None) -> None:
        """Run `start(onDone)` (which starts a logic job) once the dependencies are there (`needsModel`:
        PyTorch and the rest), reporting refusals (busy, bad input) in one sentence; `onDone(value)`
        runs when the job succeeds, `onFailed(job)` when it fails."""
        if needsModel and not self.engineReady(remote):
            return
        self.ui.progressBar.value = 0

        def done(job: Job) -> None:
            if job.state == JobState.SUCCEEDED and onDone:
                onDone(job.value)
            elif job.state == JobState.FAILED and onFailed:
                onFailed(job)
        try:
            start(done)
        except EngineBusyError as exc:
            slicer.util.warningDisplay(str(exc))
        except (ValueError, FileNotFoundError, dependencies.DependencyError, RemoteError) as exc:
            slicer.util.errorDisplay(str(exc))
        self.updateButtons()

    def engineReady(self, remote: bool = False) -> bool:
        """A workflow the remote engine runs (`remote`) needs nothing installed here when Remote is
        chosen; otherwise the local engine's dependencies must be there."""
        return (remote and self.logic.remoteEngine() is not None) or self.dependenciesReady()

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

    # -- actions (one line each to the logic) ---------------------------------------------------------

    def onSegment(self) -> None:
        p = self._parameterNode
        structures = p.structures.split(",") if p.structures else None
        self.startJob(lambda done: self.logic.segment(
            p.inputVolume, p.model, device=p.device, overlap=p.overlap, roiNode=p.roi, structures=structures,
            backbone=p.backbone, outputSegmentation=p.segmentation, onDone=done),
            onDone=lambda node: setattr(p, "segmentation", node), remote=True)

    def onClassify(self, allowLongRun: bool = False) -> None:
        p = self._parameterNode

        def show(value) -> None:
            tableNode, classification = value
            p.classificationTable = tableNode
            self.ui.classificationLabel.text = classification.summary()

        def confirmLongRun(job) -> None:
            """The engine estimated the run over a minute and started nothing: ask, then run again."""
            if job.needs_confirmation and slicer.util.confirmOkCancelDisplay(
                    _("{estimate} Run it anyway? (Choose a point first to classify only the region around it.)").format(
                        estimate=job.error), _("Long classification")):
                self.onClassify(allowLongRun=True)  # the refused run has already released the runner
        self.startJob(lambda done: self.logic.classify(p.inputVolume, p.model, device=p.device, pointNode=p.point,
                                                       backbone=p.backbone, onDone=done, allowLongRun=allowLongRun),
                      onDone=show, remote=True, onFailed=confirmLongRun)

    def onCompare(self) -> None:
        p = self._parameterNode

        def show(review) -> None:
            p.metricsTable = review.metricsTable
            worst = review.worstErrorRAS
            p.worstErrorRAS = "" if worst is None else coordinates.format_coordinates(worst)
            self.ui.metricsTableView.setMRMLTableNode(review.metricsTable)
        self.startJob(lambda done: self.logic.compare(p.segmentation, p.reference, imageVolume=p.inputVolume,
                                                      onDone=done), onDone=show)

    def onJumpToWorstError(self) -> None:
        text = self._parameterNode.worstErrorRAS
        if text:
            self.logic.jumpToPosition([float(v) for v in text.split(",")])

    def onExport(self) -> None:
        p = self._parameterNode
        self.startJob(lambda done: self.logic.export(p.segmentation, p.exportFormat, p.exportFolder,
                                                     referenceVolume=p.inputVolume, onDone=done),
                      onDone=lambda path: self.onLog("info", _("Exported to {path}").format(path=path)))

    def onLoadPhantom(self) -> None:
        def start(done):
            loaded = self.logic.loadPhantom(onDone=done)
            if isinstance(loaded, tuple):  # it was in the cache: loaded at once
                self.usePhantom(loaded)
        self.startJob(start, onDone=self.usePhantom, needsModel=False)

    def usePhantom(self, nodes) -> None:
        self._parameterNode.inputVolume, self._parameterNode.reference = nodes

    def onTeachModel(self) -> None:
        p = self._parameterNode
        name = self.ui.teachNameLineEdit.text.strip()

        def taught(model: str) -> None:
            self.interactive.taught(model)  # proposes in the next session; the next teach may build on it
            self.models.refresh()
            self.onLog("info", _("Taught the model {name}; it is in the model list and proposes the structures it "
                                 "knows in the next interactive session (Propose with).").format(name=model))
        self.startJob(lambda done: self.logic.teachModel(name, p.model, device=p.device, onDone=done,
                                                         **self.interactive.teachOptions()), onDone=taught)

    def onCancel(self) -> None:
        self.logic.cancel()
        self.interactive.showStatus()
        self.updateButtons()

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing CoralBay's dependencies failed."), waitCursor=True):
            self.onLog("info", self.logic.installDependencies())
        self.updateDependencyStatus()

    def updateDependencyStatus(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.dependencyStatusLabel.text = (
            _("All dependencies are installed.") if not missing
            else _("Missing: {names} (installed on first use, after you confirm).").format(names=", ".join(missing)))


#
# Logic
#


class CoralBaySlicerLogic(EngineJobs, InstallLogic, TaskLogic, InteractiveLogic, ScriptedLoadableModuleLogic):
    """Runs the engine on scene nodes; the scripting API. Usable from scripts without the widget:

        logic = CoralBaySlicerLogic()
        logic.segment(volumeNode, "demo-phantom-seg")
        segmentationNode = logic.wait().value

    Each workflow family is its own class in CoralBaySlicerScene/, composed here: engine_jobs.EngineJobs
    (runner, the one job at a time, callbacks), install.InstallLogic, tasks.TaskLogic (segment,
    classify, compare, export, loadPhantom, teachModel) and interactive.InteractiveLogic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._initEngineJobs()
        self._initInteractive()

    def getParameterNode(self):
        return CoralBaySlicerParameterNode(super().getParameterNode())

    def cancel(self) -> None:
        """The one Cancel: the background job, and the interactive session's waiting requests."""
        self.cancelJob()
        self.cancelInteractive()


#
# Test (runs inside Slicer: see docs/slicer.md, "The in-Slicer self-test")
#


class CoralBaySlicerTest(selftest.SelfTest):
    logicClass = CoralBaySlicerLogic

"""The Interactive section's logic: one long-lived `coralbay interact` engine per logic, its answers
applied to the scene.

Requests return at once with an id; `pollInteractive` (the interactive timer) decodes each event
once (`coralbay.interactive.messages.Event`), applies it (preview, accept, restored structures,
log, status line) and hands the decoded events to `interactiveCallback`. The answer of the
structure in progress is one preview segment of the output segmentation, replaced in place after
each interaction; Accept turns it into a named segment with colour, terminology and label value.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import slicer
from coralbay.interactive.messages import Event, EventKind, Request
from CoralBaySlicerLib import models
from CoralBaySlicerLib.interactive_session import forget_scan, forget_unused_scans, interact_argv, keep_scan
from CoralBaySlicerScene import interactive_segments as S
from CoralBaySlicerScene import nodes_to_files as N
from CoralBaySlicerScene.engine_jobs import cacheFolder
from CoralBaySlicerScene.terminology import structureAppearance


@dataclass
class InteractiveState:
    """The session of a logic: its engine, folder, the scan file it opened (kept beside the
    examples), output segmentation, the structure in progress (name, colour, terminology), its
    preview segment, the control points already sent (markups node ID -> control point IDs),
    answers not yet collected by `waitInteractive`, and what the engine is doing (`status`)."""

    session: Any
    folder: pathlib.Path
    volume: Any
    segmentation: Any
    scan: pathlib.Path
    examples: pathlib.Path
    known: Any = None                       # label table naming, colouring and coding structures (the model's)
    structure: Optional[str] = None
    color: tuple = (1.0, 1.0, 0.0)
    terminology: Optional[str] = None
    previewId: Optional[str] = None
    sentPoints: dict = field(default_factory=dict)
    files: int = 0                          # strokes, boxes and segments written for the engine
    answers: dict = field(default_factory=dict)
    restoring: dict = field(default_factory=dict)  # "labels" request id -> {name: value} of structures to import
    status: str = "Opening the scan..."

    def nextFile(self, kind: str) -> pathlib.Path:
        self.files += 1
        return self.folder / f"{kind}-{self.files}.nrrd"

    def appearance(self, name: str, index: int):
        """Colour and terminology entry of a structure: the model's label of that name, Slicer's
        terminology for a name it does not code, else a distinct colour."""
        return structureAppearance(name, self.known, index)


class InteractiveLogic:
    """Part of the module's Logic (needs `runner`, `openSession`, `newPollTimer`, `_log`, `_progress`,
    `availableModels`: see engine_jobs.EngineJobs and tasks.TaskLogic)."""

    def _initInteractive(self) -> None:
        self.interactive: Optional[InteractiveState] = None
        self.interactiveCallback = None  # called with the decoded events of each poll that had some
        self.interactiveTimer = self.newPollTimer(self.pollInteractive)

    @staticmethod
    def examplesFolder() -> pathlib.Path:
        """Where accepted structures are kept as examples (for restarts, proposals and Teach model)."""
        return cacheFolder("interactive-examples")

    def structureTable(self, model: str):
        """The label table of a catalog model (names, colours, codes), or None."""
        entry = models.find(self.availableModels(), model)
        return entry.labels if entry is not None else None

    def startInteractive(self, inputVolume, model: str, outputSegmentation=None, device: str = "auto",
                         examplesFolder=None, proposeWith: str = "", backbone: str = ""):
        """Start a session on `inputVolume` (written to the session's folder); returns the request id
        of the scan's opening. The output segmentation is created when none is given. `proposeWith`:
        a segmentation model (e.g. one taught with `teachModel`) whose segmentation starts each
        structure it knows (engine `--propose-with`); otherwise proposals come from accepted examples.
        `backbone`: encoder weights replacing the bundle's (the panel's *Encoder weights*)."""
        N.checkInputVolume(inputVolume)
        if not model:
            raise ValueError("Choose a model for interactive segmentation.")
        self.closeInteractive()
        runner = self.runner()
        root = runner.temp_root or pathlib.Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = pathlib.Path(tempfile.mkdtemp(prefix="CoralBay-interactive-", dir=str(root)))
        examples = pathlib.Path(examplesFolder or self.examplesFolder())
        try:
            N.writeVolume(inputVolume, folder / "input.nrrd")
            scan = keep_scan(folder / "input.nrrd", examples)  # outlives the session if work is accepted on it
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Features cached across sessions: the next session restores the examples of earlier scans from them.
        argv = interact_argv(runner.python, model, folder / "out", examples, device=device,
                             cache_dir=cacheFolder("feature-cache"), propose_with=proposeWith, backbone=backbone)
        try:
            session = self.openSession(argv, folder)
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
        self.interactive = InteractiveState(session, folder, inputVolume, outputSegmentation, scan, examples,
                                            known=self.structureTable(model))
        self.interactiveTimer.start()
        return self._interactiveRequest(Request.OPEN, image=str(scan))

    def startStructure(self, name: str, terminologyEntry: Optional[str] = None, color=None, propose: bool = True):
        """Begin a structure; colour and terminology default to those of the model's label of that name.
        A name used by a segment of the output segmentation is refused (accepted work is never overwritten).
        `propose`: the engine answers at once with its automatic proposal when it has one (from the
        --propose-with model, or from the structure accepted on earlier scans); it becomes the preview
        segment like any answer, and the result's `proposed_by` says where it came from."""
        state = self._interactiveState()
        name = (name or "").strip()
        if not name:
            raise ValueError("Name the structure to segment.")
        segmentation = state.segmentation.GetSegmentation()
        if segmentation.GetSegmentIdBySegmentName(name):
            raise ValueError(f"The segmentation {state.segmentation.GetName()} already has a segment named {name}; "
                             "choose another name.")
        knownColor, knownEntry = state.appearance(name, segmentation.GetNumberOfSegments())
        S.removePreview(state)  # the structure named before was not accepted: its preview goes
        state.structure = name
        state.color = tuple(color) if color is not None else knownColor
        state.terminology = terminologyEntry or knownEntry
        state.sentPoints = {}
        return self._interactiveRequest(Request.START, name=name, propose=bool(propose))

    def nextStructureName(self, names) -> Optional[str]:
        """The first of `names` (e.g. the model's structures) that is neither in progress nor a segment
        of the output segmentation yet: what "next structure" starts."""
        state = self._interactiveState()
        segmentation = state.segmentation.GetSegmentation()
        return next((n for n in names if n and n != state.structure and not segmentation.GetSegmentIdBySegmentName(n)),
                    None)

    def addInteractivePoints(self, markupsNode, positive: bool = True) -> list:
        """Send the control points of `markupsNode` not sent yet (positive or negative clicks)."""
        state = self._interactiveState(needStructure=True)
        if markupsNode is None:
            raise ValueError("Choose a point list for the clicks.")
        sent = state.sentPoints.setdefault(markupsNode.GetID(), set())
        fresh = [(markupsNode.GetNthControlPointID(i), N.controlPointLPS(markupsNode, i, state.volume))
                 for i in range(markupsNode.GetNumberOfControlPoints())
                 if markupsNode.GetNthControlPointID(i) not in sent]
        ids = []
        for pointId, lps in fresh:
            sent.add(pointId)
            ids.append(self._interactiveRequest(Request.POINT, lps=list(lps), positive=bool(positive)))
        return ids

    def addInteractiveStroke(self, segmentationNode, segmentId: str, positive: bool = True):
        """Send a painted segment as a scribble (written as a label map on the input volume's grid)."""
        state = self._interactiveState(needStructure=True)
        array = self._segmentArray(segmentationNode, segmentId, state, "paint a stroke first")
        path = state.nextFile("stroke")
        N.writeMaskOnVolume((array > 0) * (1 if positive else 2), state.volume, path, "CoralBay stroke")
        return self._interactiveRequest(Request.SCRIBBLE, path=str(path), positive_value=1, negative_value=2)

    def addInteractiveBox(self, roiNode):
        """Send a box drawn as a markups ROI in the views: the structure lies inside it (LPS corners)."""
        state = self._interactiveState(needStructure=True)
        if roiNode is None:
            raise ValueError("Draw a box (a markups ROI) around the structure first.")
        box = N.roiBoxLPS(roiNode, state.volume)
        return self._interactiveRequest(Request.BOX, lower=list(box[:3]), upper=list(box[3:]))

    def refineSegment(self, segmentationNode, segmentId: str):
        """Send an existing segment (of any segmentation) for the structure to start from and refine."""
        state = self._interactiveState(needStructure=True)
        array = self._segmentArray(segmentationNode, segmentId, state, "choose a segment with voxels")
        path = state.nextFile("segment")
        N.writeMaskOnVolume(array > 0, state.volume, path, "CoralBay segment")
        return self._interactiveRequest(Request.SEGMENT, path=str(path), value=1)

    @staticmethod
    def _segmentArray(segmentationNode, segmentId, state, hint: str):
        if segmentationNode is None or not segmentId or not segmentationNode.GetSegmentation().GetSegment(segmentId):
            raise ValueError("Choose the segment to send.")
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, state.volume)
        if array is None or not array.any():
            name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            raise ValueError(f"The segment {name} is empty: {hint}.")
        return array

    def interactiveUndo(self):
        return self._interactiveRequest(Request.UNDO, name=self._interactiveState(needStructure=True).structure)

    def interactiveRedo(self):
        return self._interactiveRequest(Request.REDO, name=self._interactiveState(needStructure=True).structure)

    def interactiveAccept(self):
        return self._interactiveRequest(Request.ACCEPT, name=self._interactiveState(needStructure=True).structure)

    def cancelInteractive(self) -> list:
        """Stop what the session is doing now (the engine is killed and restarted if it does not stop)."""
        if self.interactive is None:
            return []
        cancelled = self.interactive.session.cancel()
        if cancelled:
            self.interactive.status = "Cancelling..."
        return cancelled

    def closeInteractive(self) -> None:
        """End the session; accepted segments stay, the preview segment goes."""
        state, self.interactive = self.interactive, None
        self.interactiveTimer.stop()
        if state is None:
            return
        state.session.close()
        S.removePreview(state)
        shutil.rmtree(state.folder, ignore_errors=True)
        forget_scan(state.scan, state.examples)  # kept only while an accepted example refers to it

    def cleanUpKeptScans(self, examplesFolder=None) -> list:
        """Delete the scans kept for examples that no accepted example refers to (left by sessions
        that never ended, e.g. Slicer closed); the open session's scan stays. Returns those deleted."""
        examples = pathlib.Path(examplesFolder or (self.interactive.examples if self.interactive else
                                                   self.examplesFolder()))
        deleted = forget_unused_scans(examples, keep=self.interactive.scan if self.interactive else None)
        self._log("info", f"Deleted {len(deleted)} kept scan(s) that no accepted structure refers to.")
        return deleted

    @property
    def interactiveStatus(self) -> str:
        """What the engine is doing now, in one sentence (the panel's status line)."""
        return self.interactive.status if self.interactive else "No session."

    def pollInteractive(self) -> list:
        """Apply the session's answers (timer); returns the decoded events."""
        state = self.interactive
        if state is None:
            return []
        events = [Event.decode(e) for e in state.session.poll()]
        for event in events:
            self._applyEvent(state, event)
            if event.finishes_request:
                state.answers[event.id] = event.fields
        if events and self.interactiveCallback:
            self.interactiveCallback(events)
        return events

    def _applyEvent(self, state, event: Event) -> None:
        if event.status():
            state.status = event.status()
        if event.is_answer:
            if event.name == state.structure:  # late answers for a structure left behind are dropped
                S.showPreview(state, event.mask)
                if event.proposal_sentence():
                    self._log("info", event.proposal_sentence())
        elif event.is_result and event.request == Request.ACCEPT:
            S.acceptPreview(state, str(event.name), int(event.get("value")))
        elif event.is_result and event.request == Request.OPEN and event.get("accepted"):
            missing = S.missingAccepted(state, event.get("accepted"))
            if missing:
                state.restoring[self._interactiveRequest(Request.LABELS, path=str(state.folder / "restored.nii.gz"))] = missing
        elif event.is_result and event.id in state.restoring:
            restored = S.importRestored(state, event.get("path"), state.restoring.pop(event.id), state.appearance)
            self._log("info", f"Restored the structures accepted earlier on this scan: {', '.join(sorted(restored))}.")
        elif event.kind == EventKind.ERROR:
            self._log("error", event.message)
            if event.request == Request.START:
                state.structure = None  # the engine refused the name: no structure in progress
        elif event.kind == EventKind.LOG:
            self._log(event.level, event.message)
        elif event.kind == EventKind.PROGRESS:
            self._progress(event.fraction or 0.0, event.message)

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

    def _interactiveState(self, needStructure: bool = False) -> InteractiveState:
        if self.interactive is None:
            raise ValueError("Start an interactive session first.")
        if needStructure and not self.interactive.structure:
            raise ValueError("Name the structure to segment first.")
        return self.interactive

    def _interactiveRequest(self, kind: Request, **fields) -> str:
        state = self._interactiveState()
        requestId = state.session.request(kind.value, **fields)
        if kind not in (Request.OPEN, Request.LABELS):  # the status line says what the engine works on
            state.status = f"Working on the {kind.value}{' of ' + state.structure if state.structure else ''}..."
        return requestId

"""The module's self-test, run inside a real Slicer (docs/slicer.md, "The in-Slicer self-test"):
phantom, segment with the demo bundle, Dice against the truth, compare, classify, export, Cancel
mid-run, and an interactive edit whose engine is killed and restarted.

Why a base class here: the module file keeps `CoralBaySlicerTest` (Slicer looks it up there) as a
two-line subclass naming the Logic, so this file needs no import of the module file.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time

import numpy as np
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest
from coralbay.interactive.messages import EventKind
from coralbay.vocabulary import JobState
from CoralBaySlicerLib.jobs import Job


class SelfTest(ScriptedLoadableModuleTest):
    """Phantom -> segment (demo bundle) -> Dice against the truth -> classify -> compare -> export;
    cancel; an interactive edit with the engine killed. `logicClass`: the module's Logic."""

    logicClass = None

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
        logic = self.logicClass()
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
        logic = self._logic()
        ctNode, truthNode = self._phantom(logic)
        truth = truthNode.GetSegmentation()
        liverId = truth.GetSegmentIdBySegmentName("liver")
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(truthNode, liverId, ctNode) > 0
        opened = logic.startInteractive(ctNode, self.SEGMENTATION_MODEL)
        self.assertEqual(logic.waitInteractive(opened, self.TIMEOUT_S)["event"], EventKind.RESULT)
        self.assertEqual(logic.waitInteractive(logic.startStructure("liver"), self.TIMEOUT_S)["event"], EventKind.RESULT)
        k, j, i = (int(v) for v in np.argwhere(liver).mean(axis=0))
        ijkToRas = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(ijkToRas)
        ras = ijkToRas.MultiplyPoint([i, j, k, 1])[:3]
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
        points.AddControlPoint(list(ras))
        answer = logic.waitInteractive(logic.addInteractivePoints(points, True)[0], self.TIMEOUT_S)
        self.assertEqual(answer["event"], EventKind.RESULT, answer.get("message"))
        os.kill(logic.interactive.session.pid, signal.SIGKILL)
        accepted = logic.waitInteractive(logic.interactiveAccept(), self.TIMEOUT_S)
        self.assertEqual(accepted["event"], EventKind.RESULT, accepted.get("message"))
        self.assertEqual(logic.interactive.session.restarts, 1)
        output = logic.interactive.segmentation
        segmentId = output.GetSegmentation().GetSegmentIdBySegmentName("liver")
        self.assertTrue(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, ctNode) > 0
        dice = 2.0 * (mask & liver).sum() / max(1, mask.sum() + liver.sum())
        self.assertGreater(dice, 0.3)
        logic.closeInteractive()
        self.delayDisplay(f"Interactive test passed (Dice after one click {dice:.2f})")

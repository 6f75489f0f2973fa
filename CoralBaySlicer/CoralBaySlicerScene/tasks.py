"""The background workflows of the panel: segment, classify, compare, export, the phantom, teach.

Each is one engine job (`engine_jobs.EngineJobs._start`): `writeInputs(folder)` writes the nodes
for the engine and returns its arguments, `readOutputs(run)` brings its files back as nodes.
"""

from __future__ import annotations

import pathlib
from typing import Optional

import slicer
from coralbay.io.examples import has_examples
from coralbay.io.labels import label_table_path_for
from CoralBaySlicerLib import commands, models, results, sample_data
from CoralBaySlicerLib.files import deliver
from CoralBaySlicerLib.jobs import Job
from CoralBaySlicerScene import files_to_nodes as F
from CoralBaySlicerScene import nodes_to_files as N


class Review:
    """What Compare puts into the scene: metrics table, difference segmentation (false positive,
    false negative, mismatch), signed surface-distance volume, and the worst error's position (RAS)."""

    def __init__(self, metricsTable, differenceSegmentation, distanceVolume, worstErrorRAS) -> None:
        self.metricsTable = metricsTable
        self.differenceSegmentation = differenceSegmentation
        self.distanceVolume = distanceVolume
        self.worstErrorRAS = worstErrorRAS


class TaskLogic:
    """Part of the module's Logic (needs `_start` and `remoteEngine`, see engine_jobs.EngineJobs)."""

    def availableModels(self):
        """The catalog's models, or the server's when the Remote engine is chosen (chosen by name there)."""
        remote = self.remoteEngine()
        return models.entries(remote.models()) if remote is not None else models.list_models()

    def addModel(self, bundleFolder: str):
        return models.add_model(bundleFolder)

    def segment(self, inputVolume, model: str, device: str = "auto", overlap: Optional[float] = 0.5,
                roiNode=None, structures=None, backbone: str = "", outputSegmentation=None, onDone=None) -> Job:
        """Segment `inputVolume` with a segmentation model; the job's value is the segmentation node.

        `backbone` optionally replaces the bundle's encoder weights (a file or a hub id)."""
        N.checkInputVolume(inputVolume)
        roi = N.roiBoxLPS(roiNode, inputVolume) if roiNode else None
        args = dict(device=device, overlap=overlap, roi_lps=roi, structures=structures, backbone=backbone)
        name = f"{inputVolume.GetName()} {model}"

        def writeInputs(folder):
            source = folder / "input.nrrd"
            N.writeVolume(inputVolume, source)
            return commands.segment_args(source, model, folder / "labels.nii.gz", **args)

        def readOutputs(run):
            labelsFile = results.output_path(run.result, "labels", run.folder / "labels.nii.gz")
            node = F.importLabelMap(labelsFile, name, inputVolume, outputSegmentation)
            node.CreateClosedSurfaceRepresentation()
            slicer.util.setSliceViewerLayers(background=inputVolume)
            return node

        return self._start("segmentation", writeInputs, readOutputs, onDone)

    def classify(self, inputVolume, model: str, device: str = "auto", pointNode=None, backbone: str = "",
                 onDone=None, allowLongRun: bool = False) -> Job:
        """Classify the scan (or the region around the point's first control point).

        The job's value is (table node, results.Classification). A run the engine estimates longer
        than a minute fails at once with `job.needs_confirmation` and the estimate as its error, unless
        `allowLongRun` (the user confirmed it: the panel asks and runs again)."""
        N.checkInputVolume(inputVolume)
        point = N.pointLPS(pointNode, inputVolume) if pointNode else None

        def writeInputs(folder):
            source = folder / "input.nrrd"
            N.writeVolume(inputVolume, source)
            return commands.classify_args(source, model, folder / "report.json", device=device, point_lps=point,
                                          backbone=backbone, allow_long_run=allowLongRun)

        def readOutputs(run):
            report = results.read_classification(results.output_path(run.result, "report", run.folder / "report.json"))
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{inputVolume.GetName()} {model} classes")
            F.fillTable(table, ["class", "probability"], [[name, p] for name, p in report.rows])
            return table, report

        return self._start("classification", writeInputs, readOutputs, onDone)

    def compare(self, segmentation, reference, imageVolume=None, onDone=None) -> Job:
        """Compare a segmentation with a reference (segmentation or label map node).

        The job's value is a `Review`: metrics table, difference segmentation, surface-distance
        volume and the position of the worst error (RAS)."""
        if segmentation is None or reference is None:
            raise ValueError("Choose both a segmentation and a reference to compare.")
        geometry = imageVolume or N.referenceVolume(segmentation)
        label = f"{segmentation.GetName()} vs {reference.GetName()}"

        def writeInputs(folder):
            prediction = folder / "prediction.nrrd"
            N.writeSegmentationAsLabelMap(segmentation, prediction, geometry)
            referenceFile = folder / "reference.nrrd"
            if reference.IsA("vtkMRMLSegmentationNode"):
                N.writeSegmentationAsLabelMap(reference, referenceFile, geometry)
            else:
                # A label map volume carries only values (its colour names are usually Slicer's
                # generic table), so the engine matches its structures by label value.
                N.writeVolume(reference, referenceFile)
            image = None
            if imageVolume is not None:
                image = folder / "image.nrrd"
                N.writeVolume(imageVolume, image)
            return commands.compare_args(prediction, referenceFile, folder / "review", image=image)

        def readOutputs(run):
            review = run.folder / "review"
            metrics = results.read_metrics(review / "metrics.json")
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{label} metrics")
            F.fillTable(table, metrics.columns, metrics.rows)
            difference = F.importLabelMap(review / "difference.nii.gz", f"{label} difference", geometry)
            display = difference.GetDisplayNode()
            for hidden in results.DIFFERENCE_HIDDEN:
                segmentId = difference.GetSegmentation().GetSegmentIdBySegmentName(hidden)
                if segmentId and display:
                    display.SetSegmentVisibility(segmentId, False)
            distance = F.loadDistanceMap(review / "surface_distance.nii.gz", f"{label} surface distance (mm)")
            return Review(table, difference, distance, metrics.worst_error_ras)

        return self._start("comparison", writeInputs, readOutputs, onDone)

    def jumpToPosition(self, positionRAS) -> None:
        """Centre every slice view on a position (RAS), e.g. the worst error found by Compare."""
        x, y, z = (float(v) for v in positionRAS)
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)

    def export(self, segmentation, fmt: str, folder, referenceVolume=None, onDone=None) -> Job:
        """Export a segmentation with the engine; the job's value is the written path."""
        if segmentation is None:
            raise ValueError("Choose a segmentation to export.")
        if not folder or not pathlib.Path(folder).is_dir():
            raise ValueError(f"The export folder {folder} does not exist.")
        geometry = referenceVolume or N.referenceVolume(segmentation)
        outputName = commands.export_file_name(segmentation.GetName(), fmt)
        dicomFiles = N.dicomFiles(geometry) if fmt == "dicom-seg" else None
        if fmt == "dicom-seg" and not dicomFiles:
            raise ValueError("DICOM SEG export needs a reference CT loaded from Slicer's DICOM database.")

        def writeInputs(runFolder):
            labels = runFolder / "labels.nrrd"
            N.writeSegmentationAsLabelMap(segmentation, labels, geometry)
            series = N.linkFiles(dicomFiles, runFolder / "dicom") if dicomFiles else None
            (runFolder / "export").mkdir()
            return commands.export_args(labels, fmt, runFolder / "export" / outputName, dicom_series=series)

        def readOutputs(run):
            return deliver(run.folder / "export" / outputName, pathlib.Path(folder) / outputName)

        return self._start("export", writeInputs, readOutputs, onDone)

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

    @staticmethod
    def _loadPhantomNodes(ctFile, truthFile):
        ctNode = slicer.util.loadVolume(str(ctFile), {"name": sample_data.CT_NODE_NAME})
        truthNode = F.importLabelMap(truthFile, sample_data.TRUTH_NODE_NAME, ctNode)
        return ctNode, truthNode

    def teachModel(self, name: str, model: str, device: str = "auto", examplesFolder=None, steps=None,
                   onDone=None, startFrom: str | None = None, minutes: float | None = None) -> Job:
        """Teach a segmentation model from the accepted structures (`coralbay teach`) as a background
        job; the engine adds it to the catalog, so it is in `availableModels()` when the job succeeds.
        The job's value is the new model's name. `startFrom` (a model taught before) makes it an
        incremental teach that builds on that model; `minutes` is a time budget."""
        examples = pathlib.Path(examplesFolder or self.examplesFolder())
        if not has_examples(examples):
            raise ValueError("There are no accepted structures to teach from yet; accept structures in the "
                             "Interactive section first.")
        if any(entry.name == (name or "").strip() for entry in self.availableModels()):
            raise ValueError(f"A model named {name.strip()} is already in the catalog; choose another name.")

        def writeInputs(folder):
            return commands.teach_args(examples, model, name, device=device, steps=steps, start_from=startFrom,
                                       minutes=minutes)

        def readOutputs(run):
            return name.strip()

        return self._start("teaching", writeInputs, readOutputs, onDone)

"""The module file CoralBaySlicer.py outside Slicer: imported under the test double of the few
`slicer`/`qt` calls it makes (Testing/Python/slicer_test_double, NOT Slicer), its Logic moving real
files between scene nodes and the real engine, which runs as a real subprocess.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import vtk

from coralbay.io.labels import Label, LabelTable, Terminology, load_label_table
from CoralBaySlicerLib import coordinates, results

DOUBLE = Path(__file__).resolve().parent / "slicer_test_double"
DOUBLED = ("slicer", "qt", "CoralBaySlicer")
TIMEOUT_S = 120


@pytest.fixture
def module(monkeypatch, tmp_path):
    """CoralBaySlicer imported with the test double first on sys.path; the engine runs with this Python."""
    monkeypatch.syspath_prepend(str(DOUBLE))
    _forget_doubled_modules()
    import CoralBaySlicer
    import slicer

    monkeypatch.setattr(CoralBaySlicer.CoralBaySlicerLogic, "engineExecutable", sys.executable)
    monkeypatch.setattr(CoralBaySlicer.CoralBaySlicerLogic, "_runner", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield CoralBaySlicer
    shutil.rmtree(Path(slicer.app.temporaryPath).parent, ignore_errors=True)
    _forget_doubled_modules()


def _forget_doubled_modules():
    for name in list(sys.modules):
        if name in DOUBLED or name.startswith("slicer."):
            del sys.modules[name]


def _scene():
    import slicer

    return slicer.mrmlScene


def _load_ct(path, study_name="Study 1"):
    """A CT 'loaded in Slicer', placed under a study in the subject hierarchy."""
    import slicer

    node = slicer.util.loadVolume(str(path), {"name": "CT"})
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    study = hierarchy.CreateFolderItem(hierarchy.SCENE_ITEM, study_name)
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node), study)
    return node, study


def _totalseg_labels(tmp_path, shared_data) -> Path:
    """The TotalSegmentator label map with a label table beside it (one label with terminology)."""
    labels = tmp_path / "totalseg.nii.gz"
    shutil.copyfile(shared_data / "totalseg" / "example_seg.nii.gz", labels)
    plain = load_label_table(shared_data / "totalseg" / "labels.json")
    liver = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))
    table = LabelTable([Label(lab.value, lab.name, lab.color, liver if lab.name == "liver" else None) for lab in plain])
    results.write_label_table(table, labels)
    return labels


def _engine_has(*names: str) -> str | None:
    """None when the engine has all the commands, else the skip reason."""
    missing = [n for n in names if importlib.util.find_spec(f"coralbay.commands.{n}") is None]
    return f"the engine has no `{'`, `'.join(missing)}` command on this branch yet (merge main)" if missing else None


# -- importing and simple state ---------------------------------------------------------------------

def test_module_imports_under_the_double_with_its_parameters(module):
    import slicer

    assert not hasattr(slicer, "dicomDatabase")  # the double has only what the module calls
    logic = module.CoralBaySlicerLogic()
    params = logic.getParameterNode()
    assert (params.device, params.overlap, params.exportFormat, params.model) == ("auto", 0.5, "seg.nrrd", "")
    assert params.inputVolume is None and params.reference is None
    assert logic.timer.interval == module.CoralBaySlicerLogic.POLL_INTERVAL_MS
    assert not logic.busy
    assert {"CoralBaySlicer", "CoralBaySlicerWidget", "CoralBaySlicerLogic", "CoralBaySlicerTest"} <= set(vars(module))


# -- nodes <-> files --------------------------------------------------------------------------------

def test_engine_label_map_becomes_named_segments_under_the_input_study(module, shared_data, tmp_path):
    labels = _totalseg_labels(tmp_path, shared_data)
    ct, study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    nodes_before = _scene().GetNumberOfNodes()
    logic = module.CoralBaySlicerLogic()

    segmentation = logic._importLabelMap(labels, "TotalSegmentator", ct)

    present = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))) if v)
    table = load_label_table(tmp_path / "totalseg.labels.json")
    seg = segmentation.GetSegmentation()
    names = [seg.GetSegment(i).GetName() for i in _segment_ids(seg)]
    assert names == [table.by_value(v).name for v in present]
    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("liver"))
    assert liver.GetColor() == pytest.approx(tuple(c / 255 for c in table.by_name("liver").color))
    tag = vtk.reference("")
    assert liver.GetTag(liver.GetTerminologyEntryTagName(), tag) and "10200004^Liver" in str(tag)
    spleen = seg.GetSegment(seg.GetSegmentIdBySegmentName("spleen"))
    assert not spleen.GetTag(spleen.GetTerminologyEntryTagName(), tag)  # no code in the table: none invented
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is ct
    hierarchy = _scene().GetSubjectHierarchyNode()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    # only the segmentation was added: the temporary label map and colour table are gone again
    assert _scene().GetNumberOfNodes() == nodes_before + 1


def test_import_replaces_a_chosen_segmentation_and_names_unlabelled_maps(module, shared_data, tmp_path):
    import slicer

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    logic = module.CoralBaySlicerLogic()
    nodule = tmp_path / "nodule.nrrd"  # a label map with no label table beside it
    shutil.copyfile(shared_data / "pyradiomics" / "lung1_label.nrrd", nodule)
    chosen = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my result")
    first = logic._importLabelMap(nodule, "first", ct, chosen)
    assert first is chosen
    names = [chosen.GetSegmentation().GetSegment(i).GetName() for i in _segment_ids(chosen.GetSegmentation())]
    assert names == ["label 1"]
    assert chosen.GetNodeReference(chosen.GetReferenceImageGeometryReferenceRole()) is ct
    assert [n.GetName() for n in _scene().nodes_of_class("vtkMRMLSegmentationNode")] == ["my result"]
    empty = tmp_path / "empty.nrrd"
    image = sitk.ReadImage(str(nodule)) * 0
    sitk.WriteImage(image, str(empty))
    with pytest.raises(results.ResultError, match="has no structures"):
        logic._importLabelMap(empty, "second", ct, chosen)
    assert chosen.GetSegmentation().GetNumberOfSegments() == 1  # the failed import left it as it was
    assert [n.GetName() for n in _scene().nodes_of_class("vtkMRMLSegmentationNode")] == ["my result"]
    assert not _scene().nodes_of_class("vtkMRMLLabelMapVolumeNode") and not _scene().nodes_of_class("vtkMRMLColorTableNode")


def _segment_ids(segmentation):
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def test_segmentation_written_for_the_engine_keeps_voxels_names_and_codes(module, shared_data, tmp_path):
    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    segmentation = logic._importLabelMap(labels, "TotalSegmentator", ct)
    nodes_before = _scene().GetNumberOfNodes()

    out = tmp_path / "for-engine" / "prediction.nrrd"
    out.parent.mkdir()
    logic._writeSegmentationAsLabelMap(segmentation, out, ct)

    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(labels))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetOrigin(), original.GetOrigin()) and np.allclose(written.GetDirection(), original.GetDirection())
    table = load_label_table(tmp_path / "for-engine" / "prediction.labels.json")
    source_table = load_label_table(tmp_path / "totalseg.labels.json")
    w, o = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original)
    assert np.array_equal(w, o)  # every structure keeps its value: value matching still works
    for label in table:
        assert source_table.by_value(label.value).name == label.name
    assert table.by_name("liver").terminology == source_table.by_name("liver").terminology
    assert _scene().GetNumberOfNodes() == nodes_before  # the temporary label map and colour nodes were removed

    # a segment added in Slicer (no remembered value) gets the smallest value not in use
    import slicer

    liver = segmentation.GetSegmentation().GetSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver"))
    drawn = slicer.vtkSegment("my lesion", (1.0, 1.0, 0.0), liver.mask & (np.indices(liver.mask.shape)[0] < 12),
                              liver.geometry)
    segmentation.GetSegmentation().AddSegment(drawn)
    logic._writeSegmentationAsLabelMap(segmentation, out, ct)
    table = load_label_table(tmp_path / "for-engine" / "prediction.labels.json")
    free = min(set(range(1, 300)) - {int(v) for v in np.unique(o)})  # values of the existing segments
    assert table.by_name("my lesion").value == free
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == free).sum() == drawn.mask.sum()


def test_writing_a_volume_leaves_the_node_as_it_was(module, shared_data, tmp_path):
    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    storage_before = ct.GetStorageNode()
    nodes_before = _scene().GetNumberOfNodes()
    module.CoralBaySlicerLogic._writeVolume(ct, tmp_path / "input.nrrd")
    assert ct.GetStorageNode() is storage_before
    assert _scene().GetNumberOfNodes() == nodes_before
    written = sitk.ReadImage(str(tmp_path / "input.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(ct.image))
    assert written.GetSpacing() == pytest.approx(ct.image.GetSpacing())


def test_region_and_point_outside_the_volume_are_refused_before_anything_runs(module, shared_data):
    import slicer

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    logic = module.CoralBaySlicerLogic()
    bounds = [0.0] * 6
    ct.GetRASBounds(bounds)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi.ras_bounds = [bounds[0] - 50, bounds[0] - 10, bounds[2], bounds[3], bounds[4], bounds[5]]
    with pytest.raises(ValueError, match="lies outside the volume"):
        logic.segment(ct, "any-model", roiNode=roi)
    roi.ras_bounds = [bounds[0] + 10, bounds[0] + 30, bounds[2] + 5, bounds[2] + 25, bounds[4], bounds[5]]
    assert logic._roiBoxLPS(roi, ct) == (-(bounds[0] + 30), -(bounds[2] + 25), bounds[4],
                                         -(bounds[0] + 10), -(bounds[2] + 5), bounds[5])
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    with pytest.raises(ValueError, match="has no points"):
        logic.classify(ct, "any-model", pointNode=point)
    point.AddControlPoint([bounds[1] + 1, bounds[3], bounds[5]], "N-1")
    with pytest.raises(ValueError, match="N-1 lies outside"):
        logic.classify(ct, "any-model", pointNode=point)
    with pytest.raises(ValueError, match="Select an input volume"):
        logic.segment(None, "any-model")
    assert not logic.busy and logic.jobs.job is None  # nothing was started


# -- the real engine, end to end --------------------------------------------------------------------

def test_compare_end_to_end(module, shared_data, tmp_path):
    """Prediction segmentation vs a shifted reference label map: the engine's compare runs in a
    background process, its JSON progress is parsed, and metrics, difference and distance maps
    come back into the scene."""
    reason = _engine_has("compare")
    if reason:
        pytest.skip(reason)
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    prediction = logic._importLabelMap(labels, "prediction", ct)
    shifted = sitk.ReadImage(str(labels))
    array = np.roll(sitk.GetArrayFromImage(shifted), 2, axis=2)  # 2 voxels = 6 mm along x
    moved = sitk.GetImageFromArray(array)
    moved.CopyInformation(shifted)
    reference_file = tmp_path / "reference.nii.gz"
    sitk.WriteImage(moved, str(reference_file))
    reference = slicer.util.loadLabelVolume(str(reference_file), {"name": "reference"})

    progress = []
    logic.progressCallback = lambda fraction, message: progress.append(fraction)
    job = logic.compare(prediction, reference, imageVolume=ct)
    folder = job.run.folder
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    review = job.value
    assert progress and progress == sorted(progress)
    table = review.metricsTable.GetTable()
    names = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert "liver" in names
    dice = table.GetColumnByName("dice")
    liver_dice = dice.GetValue(names.index("liver"))
    assert 0.5 < liver_dice < 1.0  # shifted by 6 mm: overlapping, not identical
    difference = review.differenceSegmentation.GetSegmentation()
    difference_names = {difference.GetSegment(i).GetName() for i in _segment_ids(difference)}
    assert {"false positive", "false negative"} <= {n.lower() for n in difference_names}
    assert review.distanceVolume.GetStorageNode() is None  # detached from the removed run folder
    assert review.worstErrorRAS is not None
    logic.jumpToPosition(review.worstErrorRAS)
    assert slicer.modules.markups.logic().jumps[-1] == (tuple(review.worstErrorRAS), True)
    assert not folder.exists()


def test_export_end_to_end(module, shared_data, tmp_path):
    reason = _engine_has("export")
    if reason:
        pytest.skip(reason)
    slicerio = pytest.importorskip("slicerio")
    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    segmentation = logic._importLabelMap(labels, "Total Segmentator", ct)
    out = tmp_path / "exports"
    out.mkdir()
    job = logic.export(segmentation, "seg.nrrd", out, referenceVolume=ct)
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    assert job.value == out / "Total_Segmentator.seg.nrrd"
    assert [p.name for p in out.iterdir()] == ["Total_Segmentator.seg.nrrd"]
    exported = slicerio.read_segmentation(str(job.value))
    names = {s["name"] for s in exported["segments"]}
    assert names == {segmentation.GetSegmentation().GetSegment(i).GetName()
                     for i in _segment_ids(segmentation.GetSegmentation())}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The module's sample phantom (seed, 1.5 mm, axial), generated once by the real engine."""
    reason = _engine_has("phantom")
    if reason:
        pytest.skip(reason)
    from conftest import run_cli
    from CoralBaySlicerLib import commands, sample_data

    folder = tmp_path_factory.mktemp("phantom")
    done = run_cli(*commands.phantom_args(sample_data.PHANTOM_SEED, folder / "ct.nrrd", folder / "labels.nrrd",
                                          spacing_mm=sample_data.PHANTOM_SPACING_MM,
                                          direction=sample_data.PHANTOM_DIRECTION))
    assert done.returncode == 0, done.stderr
    return folder / "ct.nrrd", folder / "labels.nrrd"


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory):
    """Small random-weight bundles of the real CoralBay architecture (F=6, 64^3 windows at 6 mm),
    made with the engine's own bundle code: the same code path as the real models, in seconds."""
    reason = _engine_has("segment")
    if reason:
        pytest.skip(reason)
    from coralbay.bundle.factory import create_random_bundle, manifest_fields

    folder = tmp_path_factory.mktemp("bundles")
    liver = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))
    table = LabelTable([Label(1, "liver", (221, 130, 101), liver), Label(2, "spleen", (157, 108, 162))])
    small = dict(feature_size=6, spacing_mm=(6.0, 6.0, 6.0), window_size=(64, 64, 64), window_batch_size=1)
    seg = create_random_bundle(folder / "tiny-seg", manifest_fields("tiny-seg", "segmentation", labels=table,
                                                                     overlap=0.0, **small))
    return {"segmentation": seg, "labels": table}


def test_segment_end_to_end_on_the_phantom(module, phantom, tiny_bundles):
    """File in (the CT node written as NRRD), the engine in a background process, its JSON progress
    parsed, the label map and its table read back as segments under the input's study. The region
    is an ROI placed in RAS in one quadrant: every segmented voxel must lie inside it (converted to
    LPS wrongly, the engine would segment the mirrored quadrant instead)."""
    import slicer

    ct, study = _load_ct(phantom[0])
    bounds = [0.0] * 6
    ct.GetRASBounds(bounds)
    (x0, x1), (y0, y1) = bounds[0:2], bounds[2:4]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    roi.ras_bounds = [x0 + 0.55 * (x1 - x0), x1 - 0.05 * (x1 - x0), y0 + 0.5 * (y1 - y0), y1 - 0.1 * (y1 - y0),
                      bounds[4], bounds[5]]
    box = coordinates.ras_bounds_to_lps_box(roi.ras_bounds)
    mirrored = (-box[3], -box[4], box[2], -box[0], -box[1], box[5])  # the RAS bounds read as if LPS
    assert not coordinates.boxes_overlap(box, mirrored), "test region is not discriminating"
    logic = module.CoralBaySlicerLogic()
    progress, logged, finished = [], [], []
    logic.progressCallback = lambda fraction, message: progress.append((fraction, message))
    logic.logCallback = lambda level, message: logged.append((level, message))
    logic.finishedCallback = finished.append
    nodes_before = _scene().GetNumberOfNodes()
    job = logic.segment(ct, str(tiny_bundles["segmentation"]), device="CPU", overlap=0.0, roiNode=roi)
    folder = job.run.folder
    assert (folder / "input.nrrd").is_file() and logic.timer.isActive()
    logic.wait(TIMEOUT_S)

    assert job.state == "succeeded", job.error
    assert finished == [job] and not logic.timer.isActive()
    fractions = [f for f, _ in progress]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("window" in m for _, m in progress)  # the engine's own sliding-window messages
    assert job.run.result["outputs"]["labels"].endswith("labels.nii.gz")
    segmentation = job.value
    seg = segmentation.GetSegmentation()
    names = [seg.GetSegment(i).GetName() for i in _segment_ids(seg)]
    assert names and set(names) <= {"liver", "spleen"}
    for segment_id in _segment_ids(seg):
        segment = seg.GetSegment(segment_id)
        assert segment.geometry.GetSize() == ct.image.GetSize()  # on exactly the input grid
        assert np.allclose(segment.geometry.GetOrigin(), ct.image.GetOrigin())
        assert segment.mask.any()
        for index in np.argwhere(segment.mask)[:: max(1, int(segment.mask.sum()) // 200)]:
            x, y, z = ct.image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
            r, a, s = coordinates.lps_to_ras((x, y, z))
            b = roi.ras_bounds
            assert b[0] - 3 <= r <= b[1] + 3 and b[2] - 3 <= a <= b[3] + 3, (r, a, s)  # within a voxel
        expected = tiny_bundles["labels"].by_name(segment.GetName())
        assert segment.GetColor() == pytest.approx(tuple(c / 255 for c in expected.color))
        tag = vtk.reference("")
        has_code = segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        assert has_code == (expected.terminology is not None)
    hierarchy = _scene().GetSubjectHierarchyNode()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    assert segmentation.closed_surface
    assert _scene().GetNumberOfNodes() == nodes_before + 1
    assert not folder.exists() and not logic.busy


def test_cancel_at_the_first_progress_event_kills_the_engine_and_changes_nothing(module, phantom, tiny_bundles):
    ct, _study = _load_ct(phantom[0])
    logic = module.CoralBaySlicerLogic()
    seen = []
    logic.progressCallback = lambda fraction, message: seen.append(message)
    nodes_before = _scene().GetNumberOfNodes()
    job = logic.segment(ct, str(tiny_bundles["segmentation"]), device="CPU", overlap=0.75)
    tree = {job.run.pid}
    deadline = time.monotonic() + TIMEOUT_S
    while not seen and not job.finished and time.monotonic() < deadline:
        tree |= {p.pid for p in psutil.Process(job.run.pid).children(recursive=True)}
        logic.poll()
        time.sleep(0.01)
    assert seen and not job.finished, "the run ended before it could be cancelled"
    logic.cancel()
    assert job.state == "cancelled"
    for pid in tree:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not job.run.folder.exists()
    assert list(Path(logic.runner().temp_root).iterdir()) == []  # no file of the run anywhere
    assert _scene().GetNumberOfNodes() == nodes_before
    assert not logic.busy and not logic.timer.isActive()


def test_phantom_sample_is_generated_once_then_loaded_from_the_cache(module):
    """Sample data: the engine generates the phantom in the background into Slicer's cache; the CT
    and the true segmentation (names and codes from the phantom's label table) are loaded; the
    second request loads from the cache without running anything."""
    reason = _engine_has("phantom")
    if reason:
        pytest.skip(reason)
    import slicer
    from CoralBaySlicerLib import sample_data

    logic = module.CoralBaySlicerLogic()
    job = logic.loadPhantom()
    assert job.run.argv[-4:] == ["--spacing", "1.5", "--direction", "LPS"]
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    ct, truth = job.value
    assert sample_data.phantom_cached(slicer.app.cachePath)
    ct_file, truth_file = sample_data.phantom_files(slicer.app.cachePath)
    assert (truth_file.parent / "labels.labels.json").is_file()
    assert ct.GetName() == sample_data.CT_NODE_NAME and truth.GetName() == sample_data.TRUTH_NODE_NAME
    assert ct.image.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    seg = truth.GetSegmentation()
    names = {seg.GetSegment(i).GetName() for i in _segment_ids(seg)}
    assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "vertebrae"} <= names
    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("liver"))
    tag = vtk.reference("")
    assert liver.GetTag(liver.GetTerminologyEntryTagName(), tag) and "^Liver" in str(tag)
    assert truth.GetNodeReference(truth.GetReferenceImageGeometryReferenceRole()) is ct
    again = logic.loadPhantom()
    assert isinstance(again, tuple) and not logic.busy and logic.jobs.job is job  # no new run


def test_second_job_is_refused_while_one_runs(module, shared_data, tmp_path):
    from CoralBaySlicerLib.process import EngineBusyError

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    first, second = module.CoralBaySlicerLogic(), module.CoralBaySlicerLogic()
    nodes_before = _scene().GetNumberOfNodes()
    job = first.segment(ct, "no-such-model", device="CPU")
    assert first.busy and second.busy  # one engine for the whole application
    with pytest.raises(EngineBusyError, match="still in progress"):
        second.classify(ct, "no-such-model")
    first.cancel()
    assert job.state == "cancelled" and not job.run.folder.exists()
    assert not first.busy and not second.busy
    assert _scene().GetNumberOfNodes() == nodes_before

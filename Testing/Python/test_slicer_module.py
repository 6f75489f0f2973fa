"""The module file CoralBaySlicer.py on REAL Slicer code: slicer-core's MRML scene, nodes, storage
nodes (volume archetype, .seg.nrrd), module logics (Segmentations, Data, Subject hierarchy, Markups,
Volumes, Colors, Terminologies, Tables) and `slicer.util`. Only what lives in Slicer's Qt application
is emulated, in Testing/Python/slicer_emulation (one file per Slicer class it stands for; see its
README). The engine runs as a real subprocess.
"""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import shutil
import sys
import time
import typing
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import vtk

from coralbay.io.labels import Label, LabelTable, Terminology, load_label_table
from CoralBaySlicerLib import coordinates, dependencies, results

EMULATION = Path(__file__).resolve().parent / "slicer_emulation"
MODULE_FILE = Path(__file__).resolve().parents[2] / "CoralBaySlicer" / "CoralBaySlicer.py"
SCENE_FILES = sorted((MODULE_FILE.parent / "CoralBaySlicerScene").glob("*.py"))
LOGIC_PARTS = ("CoralBaySlicerLogic", "EngineJobs", "InstallLogic", "TaskLogic", "InteractiveLogic")
FORGET = ("slicer", "qt", "CoralBaySlicer", "CoralBaySlicerScene", "application", "io_manager", "slice_views", "subject_hierarchy_plugins")
TIMEOUT_S = 120
LIVER = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))


def _forget_slicer_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in FORGET:
            del sys.modules[name]


@pytest.fixture
def module(monkeypatch, tmp_path):
    """CoralBaySlicer imported on real slicer-core, in a fresh emulated application (new real scene
    and module logics); the engine runs with this Python."""
    pytest.importorskip("slicer_core", reason="slicer-core (pip install slicer-core) is not installed")
    monkeypatch.syspath_prepend(str(EMULATION))
    _forget_slicer_modules()
    import application

    application.start(str(tmp_path / "slicer-app"))
    import CoralBaySlicer

    monkeypatch.setattr(CoralBaySlicer.CoralBaySlicerLogic, "engineExecutable", sys.executable)
    monkeypatch.setattr(CoralBaySlicer.CoralBaySlicerLogic, "_runner", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield CoralBaySlicer
    _forget_slicer_modules()


# -- helpers ----------------------------------------------------------------------------------------

def _files_to_nodes():
    """CoralBaySlicerScene.files_to_nodes of the module the fixture imported (fresh per test)."""
    return importlib.import_module("CoralBaySlicerScene.files_to_nodes")


def _nodes_to_files():
    return importlib.import_module("CoralBaySlicerScene.nodes_to_files")


def _scene():
    import slicer

    return slicer.mrmlScene


def _nodes() -> dict[str, str]:
    """Node ID -> class name of every node in the scene."""
    scene = _scene()
    return {scene.GetNthNode(i).GetID(): scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())}


def _added(before: dict[str, str]) -> collections.Counter:
    """Classes (with counts) of the nodes added since `before`; fails if any node was removed."""
    after = _nodes()
    assert set(before) <= set(after), f"nodes removed: {set(before) - set(after)}"
    return collections.Counter(cls for node_id, cls in after.items() if node_id not in before)


def _load_ct(path, study_name="Study 1"):
    """A CT loaded with Slicer's loader, placed under a study in the subject hierarchy."""
    import slicer

    node = slicer.util.loadVolume(str(path), {"name": "CT"})
    hierarchy = _scene().GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.GetSceneItemID(), study_name)
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node), study)
    return node, study


def _image(volume) -> sitk.Image:
    """A volume node as SimpleITK image (LPS geometry), through Slicer's own writer."""
    import slicer

    folder = Path(slicer.app.temporaryPath)
    path = folder / f"{volume.GetID()}.nrrd"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(volume)
    image = sitk.ReadImage(str(path))
    path.unlink()
    return image


def _totalseg_labels(tmp_path, shared_data) -> Path:
    """The TotalSegmentator label map with a label table beside it (only the liver has a code)."""
    labels = tmp_path / "totalseg.nii.gz"
    shutil.copyfile(shared_data / "totalseg" / "example_seg.nii.gz", labels)
    plain = load_label_table(shared_data / "totalseg" / "labels.json")
    table = LabelTable([Label(lab.value, lab.name, lab.color, LIVER if lab.name == "liver" else None) for lab in plain])
    results.write_label_table(table, labels)
    return labels


def _segment_ids(segmentation) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def _segment_names(node) -> list[str]:
    seg = node.GetSegmentation()
    return [seg.GetSegment(i).GetName() for i in _segment_ids(seg)]


TEST_TERMINOLOGY = "CoralBay test terminology"
SCT_ANATOMY = {"CodeMeaning": "Anatomical Structure", "CodingSchemeDesignator": "SCT", "CodeValue": "123037004"}


def _sct(meaning: str, value: str, label: str | None = None, rgb=None, **more) -> dict:
    entry = {"CodeMeaning": meaning, "CodingSchemeDesignator": "SCT", "CodeValue": value, **more}
    if label:
        entry["3dSlicerLabel"] = label
    if rgb:
        entry["recommendedDisplayRGBValue"] = list(rgb)
    return entry


def _load_test_terminology(folder: Path) -> str:
    """A handful of entries in the DCMQI segment-context schema that Slicer's terminology files use
    (sides as type modifiers carrying the `3dSlicerLabel`, as in Slicer's general anatomy list),
    written here and loaded through the real Terminologies logic; returns the context name."""
    import slicer

    sides = lambda organ, rgb: [_sct("Left", "7771000", f"left {organ}", rgb),  # noqa: E731
                                _sct("Right", "24028007", f"right {organ}", rgb)]
    document = {
        "SegmentationCategoryTypeContextName": TEST_TERMINOLOGY,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [{**SCT_ANATOMY, "Type": [
            _sct("Spleen", "78961009", "spleen", (157, 108, 162)),
            _sct("Gallbladder", "28231008", "gallbladder", (139, 150, 98)),
            _sct("Liver", "10200004", "liver", (1, 2, 3)),
            _sct("Kidney", "64033007", Modifier=sides("kidney", (185, 102, 83))),
            _sct("Adrenal gland", "23451007", Modifier=sides("adrenal gland", (249, 186, 150))),
        ]}]},
    }
    path = folder / "test.term.json"
    path.write_text(json.dumps(document))
    assert slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(path)) == TEST_TERMINOLOGY
    return TEST_TERMINOLOGY


def _terminology(segment) -> str:
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    return str(tag)


def _mask(segmentation_node, segment_id, reference) -> np.ndarray:
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference) > 0


def _engine_has(*names: str) -> str | None:
    """None when the engine has all the commands, else the skip reason."""
    missing = [n for n in names if importlib.util.find_spec(f"coralbay.commands.{n}") is None]
    return f"the engine has no `{'`, `'.join(missing)}` command on this branch yet (merge main)" if missing else None


# -- the module on real slicer-core + the Qt emulation only ----------------------------------------

# Qt widgets and dialogs used only by the Widget and its sections (checked by the in-Slicer self-test;
# the Interactive section's shortcuts run on the emulation, test_slicer_interactive_section.py).
WIDGET_ONLY_QT = ("qt.QListWidgetItem", "qt.Qt", "qt.QFileDialog", "qt.QShortcut", "qt.QKeySequence")


def _widget_only(chain: str) -> bool:
    return any(chain == name or chain.startswith(name + ".") for name in WIDGET_ONLY_QT)


def _attribute_chains(tree) -> set[str]:
    """Every dotted name `slicer.x[.y]` / `qt.x` the module file uses."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in ("slicer", "qt"):
                chains.add(".".join([inner.id, *reversed(parts)]))
    return chains


def test_module_calls_nothing_outside_slicer_core_and_the_qt_emulation(module):
    """Every `slicer.*` name the module file and its Scene package use resolves in real slicer-core
    plus the emulation files, and so does every `from slicer... import` and every `qt.*` name outside
    the Widget and its sections."""
    import qt
    import slicer

    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in [MODULE_FILE, *SCENE_FILES]]
    logic_classes = [n for tree in trees for n in tree.body if isinstance(n, ast.ClassDef) and n.name in LOGIC_PARTS]
    assert len(logic_classes) == len(LOGIC_PARTS)
    assert not [c for n in logic_classes for c in _attribute_chains(n) if _widget_only(c)], "the Logic uses Qt widgets"
    missing = []
    for chain in sorted(set().union(*(_attribute_chains(tree) for tree in trees))):
        if _widget_only(chain):
            continue
        root, *rest = chain.split(".")
        obj = {"slicer": slicer, "qt": qt}[root]
        # Attributes of a module's logic object (slicer.modules.x.logic) are looked up on the logic.
        for part in rest[:2] if rest[:1] == ["modules"] else rest:
            if not hasattr(obj, part):
                missing.append(chain)
                break
            obj = getattr(obj, part)
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slicer"):
            imported = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(imported, a.name)]
    assert not missing, f"the module uses names that neither slicer-core nor the emulation has: {missing}"
    # and the real parts are real: slicer-core's classes and util, not stand-ins
    assert slicer.vtkMRMLScene.__module__.startswith("slicer_core")
    assert Path(slicer.util.__file__).parent.parent.name == "site-packages"
    assert isinstance(slicer.modules.segmentations.logic(), slicer.vtkSlicerSegmentationsModuleLogic)


# -- 1. the parameter node ---------------------------------------------------------------------------

def test_parameter_node_is_created_and_every_node_parameter_is_optional(module):
    """Slicer's parameterNodeWrapper writes None as every node field's default; a Union without None
    refuses it and the panel could not build its parameter node (bug 1)."""
    import slicer

    hints = typing.get_type_hints(module.CoralBaySlicerParameterNode, include_extras=True)
    node_fields = []
    for name, hint in hints.items():
        bare = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        members = typing.get_args(bare) if typing.get_origin(bare) is typing.Union else (bare,)
        if any(isinstance(m, type) and issubclass(m, slicer.vtkMRMLNode) for m in members):
            node_fields.append(name)
            assert type(None) in members, f"node parameter {name} is not Optional"
    assert {"inputVolume", "reference", "segmentation", "roi", "point"} <= set(node_fields)

    logic = module.CoralBaySlicerLogic()
    params = logic.getParameterNode()
    raw = params.parameterNode
    assert raw.IsA("vtkMRMLScriptedModuleNode") and raw.GetSingletonTag() == "CoralBaySlicer"
    assert (params.device, params.overlap, params.exportFormat, params.model) == ("auto", 0.5, "seg.nrrd", "")
    assert all(getattr(params, name) is None for name in node_fields)
    assert set(raw.GetParameterNames()) >= {"device", "overlap", "exportFormat", "model"}

    # the defaults were written to the MRML node: a second wrapper reads them back, and changes too
    ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    truth = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "truth")
    params.inputVolume, params.reference, params.overlap = ct, truth, 0.75
    again = logic.getParameterNode()
    assert again.parameterNode is raw
    assert (again.inputVolume, again.reference, again.overlap) == (ct, truth, 0.75)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    again.reference = seg
    assert params.reference is seg
    again.reference = None
    assert params.reference is None

    # validators refuse what Slicer's refuse, and the stored value stays
    with pytest.raises(ValueError, match="within range"):
        params.overlap = 0.95
    with pytest.raises(ValueError, match="must be in one of"):
        params.device = "tpu"
    with pytest.raises(ValueError, match="must be in one of"):
        params.exportFormat = "png"
    with pytest.raises(TypeError):
        params.reference = ct  # a scalar volume is neither a segmentation nor a label map
    with pytest.raises(TypeError):
        params.inputVolume = seg
    assert (params.overlap, params.device, params.reference, params.inputVolume) == (0.75, "auto", None, ct)


def test_the_emulated_wrapper_refuses_a_union_without_none_as_slicer_does(module):
    """The rule bug 1 came from, on the emulation itself: Union[A, B] cannot hold its default None."""
    import slicer
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    Broken = parameterNodeWrapper(type("Broken", (), {"__annotations__": {
        "reference": typing.Union[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLLabelMapVolumeNode]}}))

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    with pytest.raises(TypeError, match="Unable to write value 'None'"):
        Broken(node)


# -- 2. pip_install ----------------------------------------------------------------------------------

def test_pip_install_gets_exactly_what_the_dry_run_checked_without_install(module, tmp_path):
    """The real `pip install --dry-run` runs (through a launcher that records its command line);
    Slicer's pip_install adds `install` itself, so the module must pass the rest only (bug 2)."""
    from importlib.metadata import version

    from slicer import packaging

    log = tmp_path / "launcher.log"
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n")
    launcher.chmod(0o755)
    module.CoralBaySlicerLogic.engineExecutable = str(launcher)
    requirement = dependencies.Requirement("psutil", f"psutil=={version('psutil')}")  # installed: offline

    packaging.commands.clear()
    module.CoralBaySlicerLogic()._pipInstall([requirement])

    dry_run = json.loads(log.read_text().splitlines()[-1])  # the one command the launcher ran
    assert len(log.read_text().splitlines()) == 1
    report_at = dry_run.index("--report")
    assert dry_run[:report_at] == ["-m", "pip", "install", "--dry-run", "--quiet"]
    checked = dry_run[report_at + 2:]  # what the dry run installs, after `--report FILE`
    assert len(packaging.commands) == 1
    run = packaging.commands[0]
    assert run == ["install", *checked]  # Slicer's own `install` once, then exactly what was checked
    assert run.count("install") == 1 and requirement.pip in run


# -- 3, 4. segmentations written for the engine ------------------------------------------------------

def test_writing_a_segmentation_leaves_no_node_behind_even_when_it_fails(module, shared_data, tmp_path):
    """ExportSegmentsToLabelmapNode (Slicer >= 5.10) adds a '<segmentation>_ColorTable' node; every
    node the export adds goes again, after a success and after a failure (bug 3)."""
    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)
    before = _nodes()
    out = tmp_path / "for-engine"
    out.mkdir()
    _nodes_to_files().writeSegmentationAsLabelMap(segmentation, out / "prediction.nrrd", ct)
    assert _added(before) == {} and _nodes() == before
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValueError, match="could not be written"):
        _nodes_to_files().writeSegmentationAsLabelMap(segmentation, tmp_path / "a-file" / "prediction.nrrd", ct)
    assert _nodes() == before
    assert not [n for n in _nodes() if _scene().GetNodeByID(n).GetName().endswith("_ColorTable")]


def test_segmentation_written_for_the_engine_keeps_voxels_names_and_only_chosen_codes(module, shared_data, tmp_path):
    """Real segments always carry Slicer's default terminology (Tissue / Tissue): it must not reach
    the engine's label table as a code (bug 4). Voxels keep their values; a segment drawn in
    Slicer gets the smallest free value."""
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)
    seg = segmentation.GetSegmentation()
    spleen = seg.GetSegment(seg.GetSegmentIdBySegmentName("spleen"))
    tag = vtk.reference("")
    assert spleen.GetTag(spleen.GetTerminologyEntryTagName(), tag) and "^Tissue~" in str(tag)  # Slicer's default

    out = tmp_path / "for-engine" / "prediction.nrrd"
    out.parent.mkdir()
    _nodes_to_files().writeSegmentationAsLabelMap(segmentation, out, ct)
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(labels))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    w, o = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original)
    assert np.array_equal(w, o)
    table = load_label_table(out.parent / "prediction.labels.json")
    source = load_label_table(tmp_path / "totalseg.labels.json")
    for label in table:
        assert source.by_value(label.value).name == label.name
    assert table.by_name("liver").terminology == LIVER
    assert table.by_name("spleen").terminology is None  # not an invented Tissue code
    assert all(label.terminology is None for label in table if label.name != "liver")

    drawn_id = seg.AddEmptySegment("", "my lesion", [1.0, 1.0, 0.0])
    liver_mask = _mask(segmentation, seg.GetSegmentIdBySegmentName("liver"), ct)
    lesion = liver_mask & (np.indices(liver_mask.shape)[0] < 12)
    slicer.util.updateSegmentBinaryLabelmapFromArray(lesion.astype(np.uint8), segmentation, drawn_id, ct)
    _nodes_to_files().writeSegmentationAsLabelMap(segmentation, out, ct)
    table = load_label_table(out.parent / "prediction.labels.json")
    free = min(set(range(1, 300)) - {int(v) for v in np.unique(o)})
    assert table.by_name("my lesion").value == free and table.by_name("my lesion").terminology is None
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == free).sum() == lesion.sum()


def test_writing_a_volume_leaves_the_node_and_the_scene_as_they_were(module, shared_data, tmp_path):
    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    storage_before = ct.GetStorageNodeID()
    before = _nodes()
    _nodes_to_files().writeVolume(ct, tmp_path / "input.nrrd")
    assert ct.GetStorageNodeID() == storage_before and _nodes() == before
    written, source = sitk.ReadImage(str(tmp_path / "input.nrrd")), sitk.ReadImage(str(shared_data / "pyradiomics" / "lung1_image.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
    assert written.GetSpacing() == pytest.approx(source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)


# -- 5. importing engine label maps -------------------------------------------------------------------

def test_engine_label_map_becomes_named_segments_under_the_input_study(module, shared_data, tmp_path):
    """Real import: segment IDs are Slicer's (random), names/colours/codes from the label table, and
    only a segmentation node with its display node stays (bug 5)."""
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    before = _nodes()
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)

    assert _added(before) == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1}
    present = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))) if v)
    table = load_label_table(tmp_path / "totalseg.labels.json")
    assert _segment_names(segmentation) == [table.by_value(v).name for v in present]
    seg = segmentation.GetSegmentation()
    assert set(_segment_ids(seg)).isdisjoint(_segment_names(segmentation))  # IDs are not the names
    liver_id = seg.GetSegmentIdBySegmentName("liver")
    liver = seg.GetSegment(liver_id)
    assert liver.GetColor() == pytest.approx(tuple(c / 255 for c in table.by_name("liver").color))
    tag = vtk.reference("")
    assert liver.GetTag(liver.GetTerminologyEntryTagName(), tag) and "10200004^Liver" in str(tag)
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    assert np.array_equal(_mask(segmentation, liver_id, ct), source == table.by_name("liver").value)
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is ct
    hierarchy = _scene().GetSubjectHierarchyNode()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    assert isinstance(segmentation.GetDisplayNode(), slicer.vtkMRMLSegmentationDisplayNode)


def test_structures_the_label_table_does_not_code_take_slicers_terminology(module, shared_data, tmp_path):
    """A bundle's label without a code gets the entry of Slicer's loaded terminology whose
    3dSlicerLabel matches its name (kidney_left -> "left kidney": Kidney, modifier Left); the table's
    own code and colour win where it has them; a name no terminology knows keeps no code. The codes
    reach the label table written back for the engine."""
    _load_test_terminology(tmp_path)
    labels = _totalseg_labels(tmp_path, shared_data)
    table = load_label_table(tmp_path / "totalseg.labels.json")
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)
    seg = segmentation.GetSegmentation()
    segment = lambda name: seg.GetSegment(seg.GetSegmentIdBySegmentName(name))  # noqa: E731

    assert {"spleen", "kidney_left", "kidney_right", "liver", "stomach"} <= set(_segment_names(segmentation))
    assert _terminology(segment("spleen")).startswith(f"{TEST_TERMINOLOGY}~SCT^123037004^Anatomical Structure~"
                                                      "SCT^78961009^Spleen~^^~")
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in _terminology(segment("kidney_left"))
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in _terminology(segment("kidney_right"))
    assert TEST_TERMINOLOGY not in _terminology(segment("liver"))  # the bundle's code, not Slicer's
    assert "^Tissue~" in _terminology(segment("stomach"))  # no entry: Slicer's placeholder, no code
    assert segment("spleen").GetColor() == pytest.approx(tuple(c / 255 for c in table.by_name("spleen").color))

    out = tmp_path / "for-engine" / "prediction.nrrd"
    out.parent.mkdir()
    _nodes_to_files().writeSegmentationAsLabelMap(segmentation, out, ct)
    written = load_label_table(out.parent / "prediction.labels.json")
    assert written.by_name("spleen").terminology == Terminology(("SCT", "123037004", "Anatomical Structure"),
                                                                ("SCT", "78961009", "Spleen"))
    assert written.by_name("kidney_left").terminology.modifier == ("SCT", "7771000", "Left")
    assert written.by_name("liver").terminology == LIVER and written.by_name("stomach").terminology is None


def _offscreen_rendering_works() -> bool:
    """VTK can draw offscreen here (Mesa's EGL or an X display): probed in a child process, as a broken
    OpenGL setup can abort the process that tries."""
    import subprocess

    probe = ("import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8); "
             "r = vtk.vtkRenderer(); w.AddRenderer(r); r.SetBackground(1, 0, 0); w.Render(); "
             "g = vtk.vtkWindowToImageFilter(); g.SetInput(w); g.Update(); "
             "print(g.GetOutput().GetPointData().GetScalars().GetRange(0))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return result.returncode == 0 and "255" in result.stdout


def test_an_imported_segmentation_shows_in_the_slice_views(module, shared_data, tmp_path):
    """'Shown in 2D': the slice view drawn by slicer-core (vtkMRMLSliceLogic's image under the
    segmentations displayable manager, slicer_emulation/slice_views.render) tints the liver's pixels
    with its colour, and only where the liver is; hidden, the segmentation is not drawn."""
    if not _offscreen_rendering_works():
        pytest.skip("VTK cannot render offscreen on this machine (no EGL or X display)")
    import slice_views
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    slicer.util.setSliceViewerLayers(background=ct)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(labels))) == 5  # TotalSegmentator's liver
    k, j, i = (int(v) for v in np.argwhere(truth).mean(axis=0).round())
    matrix = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(matrix)
    centre = [sum(matrix.GetElement(r, c) * v for c, v in enumerate((i, j, k, 1))) for r in range(3)]
    plain = slice_views.render("Red", 200, centre).astype(int)
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)
    shown = slice_views.render("Red", 200, centre).astype(int)
    segmentation.GetDisplayNode().SetVisibility(False)
    hidden = slice_views.render("Red", 200, centre).astype(int)

    assert plain.std() > 10  # the CT itself is drawn
    assert np.array_equal(hidden, plain)
    changed = np.abs(shown - plain).sum(axis=2) > 30
    assert 0.05 < changed.mean() < 0.6 and not changed[:10, :10].any()  # segments drawn; the air around is not
    xy_to_ras = vtk.vtkMatrix4x4()
    xy_to_ras.DeepCopy(next(n for n in slicer.util.getNodesByClass("vtkMRMLSliceNode")
                            if n.GetLayoutName() == "Red").GetXYToRAS())
    xy_to_ras.Invert()
    x, y = (int(round(v)) for v in xy_to_ras.MultiplyPoint([*centre, 1.0])[:2])
    colour = np.array(load_label_table(tmp_path / "totalseg.labels.json").by_name("liver").color)
    before, after = plain[200 - 1 - y, x], shown[200 - 1 - y, x]  # rows are top first, XY bottom first
    assert changed[200 - 1 - y, x] and np.all(np.sign(after - before) == np.sign(colour - before)), (before, after, colour)


def test_import_replaces_a_chosen_segmentation_and_a_failed_import_changes_nothing(module, shared_data, tmp_path):
    import slicer

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    logic = module.CoralBaySlicerLogic()
    nodule = tmp_path / "nodule.nrrd"  # a label map with no label table beside it
    shutil.copyfile(shared_data / "pyradiomics" / "lung1_label.nrrd", nodule)
    chosen = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my result")
    before = _nodes()
    first = _files_to_nodes().importLabelMap(nodule, "first", ct, chosen)
    assert first is chosen and _segment_names(chosen) == ["label 1"]
    assert chosen.GetNodeReference(chosen.GetReferenceImageGeometryReferenceRole()) is ct
    assert _added(before) == {"vtkMRMLSegmentationDisplayNode": 1}  # the chosen node got its display node

    before = _nodes()
    ids_before = _segment_ids(chosen.GetSegmentation())
    empty = tmp_path / "empty.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(nodule)) * 0, str(empty))
    with pytest.raises(results.ResultError, match="has no structures"):
        _files_to_nodes().importLabelMap(empty, "second", ct, chosen)
    assert _nodes() == before  # no label map, colour table, segmentation or display node left
    assert _segment_ids(chosen.GetSegmentation()) == ids_before
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\nnot a header\n")
    with pytest.raises(RuntimeError):
        _files_to_nodes().importLabelMap(broken, "third", ct, chosen)
    assert _nodes() == before
    # An engine output cut short (an interrupted copy) is refused with the engine's sentence, not read
    # with zeros for its missing half as Slicer's reader would.
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(nodule)), str(whole), True)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(results.ResultError, match="cut short"):
        _files_to_nodes().importLabelMap(cut, "fourth", ct, chosen)
    assert _nodes() == before and _segment_ids(chosen.GetSegmentation()) == ids_before


def test_a_one_structure_label_map_keeps_its_table_name_and_code(module, shared_data, tmp_path):
    """Slicer may name the only segment of a one-label map after the label map node; segments are
    matched by label value, so the table's name, colour and code are applied all the same."""
    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    nodule = tmp_path / "nodule.nrrd"
    shutil.copyfile(shared_data / "pyradiomics" / "lung1_label.nrrd", nodule)
    value = int(max(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(nodule))))))
    lesion = Terminology(("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "27925004", "Nodule"))
    results.write_label_table(LabelTable([Label(value, "nodule", (200, 80, 40), lesion)]), nodule)
    segmentation = _files_to_nodes().importLabelMap(nodule, "lung", ct)
    seg = segmentation.GetSegmentation()
    assert _segment_names(segmentation) == ["nodule"]
    segment = seg.GetNthSegment(0)
    assert segment.GetColor() == pytest.approx((200 / 255, 80 / 255, 40 / 255))
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and "27925004^Nodule" in str(tag)
    assert segment.GetTag("CoralBay.LabelValue", tag) and str(tag) == str(value)


def _removals():
    """Record the ID of every node the scene announces as removed (NodeRemovedEvent)."""
    import slicer

    removed = []

    def onRemoved(caller, event, node):
        removed.append(node.GetID())

    onRemoved.CallDataType = vtk.VTK_OBJECT
    _scene().AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, onRemoved)
    return removed


def test_reading_outputs_that_fail_halfway_removes_each_added_node_once(module, shared_data, tmp_path):
    """Slicer's Data module removes a node's display and storage nodes with it; removing them again
    makes the scene announce a second removal of nodes it no longer has (bug 5). After a job's
    reading fails halfway, every node it added is gone and each was removed exactly once."""
    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    before = _nodes()

    def readOutputs(run):
        _files_to_nodes().importLabelMap(labels, "half-read", ct)
        _files_to_nodes().loadDistanceMap(labels, "half-read distance")
        raise results.ResultError("the metrics could not be read")

    removed = _removals()
    with pytest.raises(results.ResultError):
        importlib.import_module("CoralBaySlicerScene.scene_guard").keepSceneOnFailure(readOutputs)(None)
    assert _nodes() == before
    duplicates = [node_id for node_id, n in collections.Counter(removed).items() if n > 1]
    assert not duplicates, f"removed twice: {duplicates}"
    assert not set(removed) & set(before)


# -- inputs refused before anything runs -------------------------------------------------------------

def test_region_and_point_outside_the_volume_are_refused_before_anything_runs(module, shared_data):
    import slicer

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    logic = module.CoralBaySlicerLogic()
    b = [0.0] * 6
    ct.GetRASBounds(b)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi.SetXYZ(b[0] - 30, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2)
    roi.SetRadiusXYZ(20, (b[3] - b[2]) / 2, (b[5] - b[4]) / 2)
    with pytest.raises(ValueError, match="lies outside the volume"):
        logic.segment(ct, "any-model", roiNode=roi)
    roi.SetXYZ(b[0] + 20, b[2] + 15, (b[4] + b[5]) / 2)
    roi.SetRadiusXYZ(10, 10, (b[5] - b[4]) / 2)
    box = _nodes_to_files().roiBoxLPS(roi, ct)
    assert box == pytest.approx((-(b[0] + 30), -(b[2] + 25), b[4], -(b[0] + 10), -(b[2] + 5), b[5]))
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    with pytest.raises(ValueError, match="has no points"):
        logic.classify(ct, "any-model", pointNode=point)
    point.AddControlPoint([b[1] + 1, b[3], b[5]], "N-1")
    with pytest.raises(ValueError, match="N-1 lies outside"):
        logic.classify(ct, "any-model", pointNode=point)
    point.SetNthControlPointPosition(0, (b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2)
    inside = _nodes_to_files().pointLPS(point, ct)
    assert inside == pytest.approx([-(b[0] + b[1]) / 2, -(b[2] + b[3]) / 2, (b[4] + b[5]) / 2])
    with pytest.raises(ValueError, match="Select an input volume"):
        logic.segment(None, "any-model")
    assert not logic.busy and logic.jobs.job is None


# -- the real engine, end to end --------------------------------------------------------------------

def _shifted_reference(labels: Path, tmp_path: Path) -> Path:
    shifted = sitk.ReadImage(str(labels))
    moved = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(shifted), 2, axis=2))  # 2 voxels along x
    moved.CopyInformation(shifted)
    reference_file = tmp_path / "reference.nii.gz"
    sitk.WriteImage(moved, str(reference_file))
    return reference_file


def test_compare_end_to_end_leaves_exactly_its_review_nodes(module, shared_data, tmp_path):
    """Prediction segmentation vs a shifted reference label map through the engine's compare: the
    metrics table, the difference segmentation and the distance map come back, nothing else stays,
    and the slice views jump to the worst error."""
    reason = _engine_has("compare")
    if reason:
        pytest.skip(reason)
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    prediction = _files_to_nodes().importLabelMap(labels, "prediction", ct)
    reference = slicer.util.loadLabelVolume(str(_shifted_reference(labels, tmp_path)), {"name": "reference", "show": False})
    before = _nodes()
    progress = []
    logic.progressCallback = lambda fraction, message: progress.append(fraction)
    job = logic.compare(prediction, reference, imageVolume=ct)
    folder = job.run.folder
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    review = job.value
    assert _added(before) == {"vtkMRMLTableNode": 1, "vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1,
                              "vtkMRMLScalarVolumeNode": 1, "vtkMRMLScalarVolumeDisplayNode": 1}
    assert progress and progress == sorted(progress)
    table = review.metricsTable.GetTable()
    names = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    dice = table.GetColumnByName("dice")
    assert 0.5 < dice.GetValue(names.index("liver")) < 1.0  # shifted by 2 voxels: overlapping, not identical
    difference = review.differenceSegmentation
    assert {"false positive", "false negative"} <= {n.lower() for n in _segment_names(difference)}
    for hidden in results.DIFFERENCE_HIDDEN:
        segment_id = difference.GetSegmentation().GetSegmentIdBySegmentName(hidden)
        if segment_id:
            assert not difference.GetDisplayNode().GetSegmentVisibility(segment_id)
    distance = review.distanceVolume
    assert distance.GetStorageNode() is None  # detached from the removed run folder
    assert distance.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    low, high = distance.GetDisplayNode().GetWindowLevelMin(), distance.GetDisplayNode().GetWindowLevelMax()
    assert low == pytest.approx(-high) and high >= 1.0
    composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == distance.GetID() and composite.GetForegroundOpacity() == 0.5
    assert review.worstErrorRAS is not None
    logic.jumpToPosition(review.worstErrorRAS)
    slice_nodes = slicer.util.getNodesByClass("vtkMRMLSliceNode")
    assert len(slice_nodes) == 3
    for slice_node in slice_nodes:  # every view centred on the worst error
        matrix = slice_node.GetSliceToRAS()
        assert [matrix.GetElement(i, 3) for i in range(3)] == pytest.approx(list(review.worstErrorRAS), abs=1e-3)
    assert not folder.exists()


def test_export_seg_nrrd_end_to_end_read_back_by_slicer(module, shared_data, tmp_path):
    """The .seg.nrrd the engine writes, read by Slicer's own reader: names, colours, terminology,
    voxels and geometry as in the scene; only the loaded segmentation is added."""
    reason = _engine_has("export")
    if reason:
        pytest.skip(reason)
    import slicer

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    logic = module.CoralBaySlicerLogic()
    segmentation = _files_to_nodes().importLabelMap(labels, "Total Segmentator", ct)
    out = tmp_path / "exports"
    out.mkdir()
    before = _nodes()
    job = logic.export(segmentation, "seg.nrrd", out, referenceVolume=ct)
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    assert _nodes() == before  # export adds nothing to the scene
    assert job.value == out / "Total_Segmentator.seg.nrrd" and [p.name for p in out.iterdir()] == ["Total_Segmentator.seg.nrrd"]

    loaded = slicer.util.loadSegmentation(str(job.value))
    assert _added(before)["vtkMRMLSegmentationNode"] == 1
    assert _segment_names(loaded) == _segment_names(segmentation)
    seg, original = loaded.GetSegmentation(), segmentation.GetSegmentation()
    for name in ("liver", "spleen"):
        a, b = seg.GetSegment(seg.GetSegmentIdBySegmentName(name)), original.GetSegment(original.GetSegmentIdBySegmentName(name))
        assert a.GetColor() == pytest.approx(b.GetColor(), abs=1 / 255)
        assert np.array_equal(_mask(loaded, seg.GetSegmentIdBySegmentName(name), ct),
                              _mask(segmentation, original.GetSegmentIdBySegmentName(name), ct))
    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("liver"))
    tag = vtk.reference("")
    assert liver.GetTag(liver.GetTerminologyEntryTagName(), tag) and "SCT^10200004^Liver" in str(tag)


def test_seg_nrrd_written_by_slicer_read_by_the_engine(module, shared_data, tmp_path):
    """Slicer's segmentation storage node writes a .seg.nrrd; the engine's reader gets the names,
    colours, chosen terminology and voxels on the CT's grid."""
    import slicer
    from coralbay.io.seg_nrrd import read_seg_nrrd

    labels = _totalseg_labels(tmp_path, shared_data)
    ct, _study = _load_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    segmentation = _files_to_nodes().importLabelMap(labels, "TotalSegmentator", ct)
    path = tmp_path / "from-slicer.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    image, table, _warnings = read_seg_nrrd(path)
    assert [label.name for label in table] == _segment_names(segmentation)
    liver = table.by_name("liver")
    assert liver.terminology is not None and liver.terminology.type[1] == "10200004"
    assert table.by_name("spleen").terminology is None  # Slicer's Tissue placeholder is not a code
    assert liver.color == load_label_table(tmp_path / "totalseg.labels.json").by_name("liver").color
    ct_image = _image(ct)
    resampled = sitk.Resample(image, ct_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    got = sitk.GetArrayFromImage(resampled)
    assert np.array_equal(got == liver.value, source == load_label_table(tmp_path / "totalseg.labels.json").by_name("liver").value)

    # a segment drawn over the liver: Slicer stores it in a second layer; the engine reads both
    import slicer

    seg = segmentation.GetSegmentation()
    liver_mask = _mask(segmentation, seg.GetSegmentIdBySegmentName("liver"), ct)
    lesion = liver_mask & (np.indices(liver_mask.shape)[0] < 12)
    lesion_id = seg.AddEmptySegment("", "my lesion", [1.0, 1.0, 0.0])
    slicer.util.updateSegmentBinaryLabelmapFromArray(lesion.astype(np.uint8), segmentation, lesion_id, ct)
    assert seg.GetNumberOfLayers() == 2
    assert storage.WriteData(segmentation)
    image, table, warnings = read_seg_nrrd(path)
    assert [label.name for label in table] == _segment_names(segmentation)
    assert table.by_name("my lesion").terminology is None
    resampled = sitk.Resample(image, ct_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    got = sitk.GetArrayFromImage(resampled)
    assert np.array_equal(got == table.by_name("my lesion").value, lesion)  # listed later: wins the shared voxels
    assert warnings and "overlap" in warnings[0]


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
    """Small random-weight bundles of the real CoralBay architecture (F=6, 64^3 windows at 6 mm)."""
    reason = _engine_has("segment")
    if reason:
        pytest.skip(reason)
    from coralbay.bundle.factory import create_random_bundle, manifest_fields

    folder = tmp_path_factory.mktemp("bundles")
    table = LabelTable([Label(1, "liver", (221, 130, 101), LIVER), Label(2, "spleen", (157, 108, 162))])
    small = dict(feature_size=6, spacing_mm=(6.0, 6.0, 6.0), window_size=(64, 64, 64), window_batch_size=1)
    seg = create_random_bundle(folder / "tiny-seg", manifest_fields("tiny-seg", "segmentation", labels=table,
                                                                     overlap=0.0, **small))
    cls = create_random_bundle(folder / "tiny-cls", manifest_fields("tiny-cls", "classification",
                                                                     classes=["benign", "malignant"], overlap=0.0, **small))
    return {"segmentation": seg, "classification": cls, "labels": table}


def test_segment_end_to_end_on_the_phantom(module, phantom, tiny_bundles):
    """CT node written by Slicer's writer, the engine in a background process, its JSON progress
    parsed, the label map read back as segments under the input's study. The region is a real ROI
    in one quadrant: every segmented voxel lies inside it (an RAS/LPS mix-up would segment the
    mirrored quadrant)."""
    import slicer

    ct, study = _load_ct(phantom[0])
    b = [0.0] * 6
    ct.GetRASBounds(b)
    ras = [b[0] + 0.55 * (b[1] - b[0]), b[1] - 0.05 * (b[1] - b[0]), b[2] + 0.5 * (b[3] - b[2]), b[3] - 0.1 * (b[3] - b[2]),
           b[4], b[5]]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    roi.SetXYZ((ras[0] + ras[1]) / 2, (ras[2] + ras[3]) / 2, (ras[4] + ras[5]) / 2)
    roi.SetRadiusXYZ((ras[1] - ras[0]) / 2, (ras[3] - ras[2]) / 2, (ras[5] - ras[4]) / 2)
    box = coordinates.ras_bounds_to_lps_box(ras)
    assert not coordinates.boxes_overlap(box, (-box[3], -box[4], box[2], -box[0], -box[1], box[5]))
    logic = module.CoralBaySlicerLogic()
    progress, finished = [], []
    logic.progressCallback = lambda fraction, message: progress.append((fraction, message))
    logic.finishedCallback = finished.append
    before = _nodes()
    job = logic.segment(ct, str(tiny_bundles["segmentation"]), device="CPU", overlap=0.0, roiNode=roi)
    folder = job.run.folder
    assert (folder / "input.nrrd").is_file() and logic.timer.isActive()
    assert _nodes() == before  # writing the input added nothing
    logic.wait(TIMEOUT_S)

    assert job.state == "succeeded", job.error
    assert finished == [job] and not logic.timer.isActive()
    fractions = [f for f, _ in progress]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("window" in m for _, m in progress)
    segmentation = job.value
    assert _added(before) == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1}
    names = _segment_names(segmentation)
    assert names and set(names) <= {"liver", "spleen"}
    ct_image = _image(ct)
    seg = segmentation.GetSegmentation()
    for segment_id in _segment_ids(seg):
        mask = _mask(segmentation, segment_id, ct)
        assert mask.shape == sitk.GetArrayFromImage(ct_image).shape and mask.any()
        for index in np.argwhere(mask)[:: max(1, int(mask.sum()) // 200)]:
            r, a, _s = coordinates.lps_to_ras(ct_image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]]))
            assert ras[0] - 3 <= r <= ras[1] + 3 and ras[2] - 3 <= a <= ras[3] + 3, (r, a)
        segment = seg.GetSegment(segment_id)
        expected = tiny_bundles["labels"].by_name(segment.GetName())
        assert segment.GetColor() == pytest.approx(tuple(c / 255 for c in expected.color))
    assert seg.ContainsRepresentation("Closed surface")
    hierarchy = _scene().GetSubjectHierarchyNode()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    assert not folder.exists() and not logic.busy


def test_classify_end_to_end_adds_only_its_table(module, phantom, tiny_bundles):
    """Classification of the region around a real markups point: the engine's report comes back as
    one table node (class, probability), probabilities summing to 1."""
    import slicer

    ct, _study = _load_ct(phantom[0])
    b = [0.0] * 6
    ct.GetRASBounds(b)
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion")
    point.AddControlPoint([(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2], "L-1")
    logic = module.CoralBaySlicerLogic()
    before = _nodes()
    job = logic.classify(ct, str(tiny_bundles["classification"]), device="CPU", pointNode=point)
    centre = [-(b[0] + b[1]) / 2, -(b[2] + b[3]) / 2, (b[4] + b[5]) / 2]  # the point in LPS
    given = next(a for a in job.run.argv if a.startswith("--point="))
    assert [float(v) for v in given[len("--point="):].split(",")] == pytest.approx(centre, abs=1e-3)
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    assert _added(before) == {"vtkMRMLTableNode": 1}
    table_node, classification = job.value
    table = table_node.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["class", "probability"]
    assert {table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())} == {"benign", "malignant"}
    assert sum(table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())) == pytest.approx(1.0, abs=1e-3)
    assert sum(p for _name, p in classification.rows) == pytest.approx(1.0, abs=1e-3)


def test_a_whole_scan_classification_of_hours_is_not_started_without_confirmation(module, phantom):
    """The demo classifier is made for the region around a point; over the whole sample phantom it
    needs thousands of windows. The engine estimates the run and starts nothing; the job says it
    needs the user's confirmation (the panel asks, then runs with allowLongRun)."""
    ct, _study = _load_ct(phantom[0])
    logic = module.CoralBaySlicerLogic()
    before = _nodes()
    job = logic.classify(ct, "demo-phantom-cls", device="CPU")
    assert "--allow-long-run" not in job.run.argv
    logic.wait(TIMEOUT_S)
    assert job.state == "failed" and job.needs_confirmation, (job.state, job.error)
    assert "windows" in job.error and "--point" in job.error
    assert _nodes() == before


def test_cancel_at_the_first_progress_event_kills_the_engine_and_changes_nothing(module, phantom, tiny_bundles):
    ct, _study = _load_ct(phantom[0])
    logic = module.CoralBaySlicerLogic()
    seen = []
    logic.progressCallback = lambda fraction, message: seen.append(message)
    before = _nodes()
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
    assert list(Path(logic.runner().temp_root).iterdir()) == []
    assert _nodes() == before
    assert not logic.busy and not logic.timer.isActive()


def test_phantom_sample_is_generated_once_then_loaded_from_the_cache(module):
    """The engine generates the phantom into Slicer's cache; the CT and the true segmentation are
    loaded (a volume with display and storage nodes, a segmentation with its display node); the
    second request loads from the cache without running anything."""
    reason = _engine_has("phantom")
    if reason:
        pytest.skip(reason)
    import slicer
    from CoralBaySlicerLib import sample_data

    logic = module.CoralBaySlicerLogic()
    before = _nodes()
    job = logic.loadPhantom()
    assert job.run.argv[-4:] == ["--spacing", "1.5", "--direction", "LPS"]
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", job.error
    assert _added(before) == {"vtkMRMLScalarVolumeNode": 1, "vtkMRMLScalarVolumeDisplayNode": 1,
                              "vtkMRMLVolumeArchetypeStorageNode": 1, "vtkMRMLSegmentationNode": 1,
                              "vtkMRMLSegmentationDisplayNode": 1}
    ct, truth = job.value
    assert sample_data.phantom_cached(slicer.app.cachePath)
    assert ct.GetName() == sample_data.CT_NODE_NAME and truth.GetName() == sample_data.TRUTH_NODE_NAME
    assert ct.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    assert {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "vertebrae"} <= set(_segment_names(truth))
    seg = truth.GetSegmentation()
    liver = seg.GetSegment(seg.GetSegmentIdBySegmentName("liver"))
    tag = vtk.reference("")
    assert liver.GetTag(liver.GetTerminologyEntryTagName(), tag) and "^Liver" in str(tag)
    assert truth.GetNodeReference(truth.GetReferenceImageGeometryReferenceRole()) is ct
    again = logic.loadPhantom()
    assert isinstance(again, tuple) and not logic.busy and logic.jobs.job is job


def test_second_job_is_refused_while_one_runs(module, shared_data):
    from CoralBaySlicerLib.process import EngineBusyError

    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    first, second = module.CoralBaySlicerLogic(), module.CoralBaySlicerLogic()
    before = _nodes()
    job = first.segment(ct, "no-such-model", device="CPU")
    assert first.busy and second.busy
    with pytest.raises(EngineBusyError, match="still in progress"):
        second.classify(ct, "no-such-model")
    first.cancel()
    assert job.state == "cancelled" and not job.run.folder.exists()
    assert not first.busy and not second.busy
    assert _nodes() == before


def test_a_failing_job_leaves_the_scene_as_it_was(module, shared_data):
    """An engine error (unknown model) ends the job as failed with the engine's sentence; no node stays."""
    ct, _study = _load_ct(shared_data / "pyradiomics" / "lung1_image.nrrd")
    logic = module.CoralBaySlicerLogic()
    before = _nodes()
    job = logic.segment(ct, "no-such-model", device="CPU")
    logic.wait(TIMEOUT_S)
    assert job.state == "failed" and "no-such-model" in (job.error or "")
    assert _nodes() == before and not logic.busy

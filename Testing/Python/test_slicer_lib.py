"""The Slicer module's Slicer-free helpers (CoralBaySlicerLib): coordinates, command lines, results,
segment label tables, dependencies, catalog entries, file delivery. Real files, real engine code."""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.io.labels import Label, LabelTable, Terminology, load_label_table
from CoralBaySlicerLib import (commands, coordinates, dependencies, files, models, results, sample_data,
                               segments)


# -- RAS <-> LPS ------------------------------------------------------------------------------------

def nifti_sform(path: Path) -> np.ndarray:
    """The 4x4 voxel -> RAS matrix a NIfTI-1 file declares (read from its header, not via ITK)."""
    with gzip.open(path, "rb") as f:
        header = f.read(348)
    assert struct.unpack("<i", header[:4])[0] == 348, "not a little-endian NIfTI-1 header"
    assert struct.unpack("<h", header[254:256])[0] > 0, "the file has no sform"
    rows = [struct.unpack("<4f", header[offset:offset + 16]) for offset in (280, 296, 312)]
    return np.vstack([np.array(rows, dtype=float), [0, 0, 0, 1]])


@pytest.mark.parametrize("name", ["totalseg/example_ct_sm.nii.gz", "totalseg/example_seg_dicom.nii.gz"])
def test_ras_to_lps_matches_itk_on_real_files(shared_data, name):
    """A voxel's RAS position by the file's own NIfTI header, converted, equals ITK's LPS position.

    The two files are stored in different orientations (RAS and LAS)."""
    path = shared_data / name
    sform = nifti_sform(path)
    image = sitk.ReadImage(str(path))
    rng = np.random.default_rng(0)
    for index in rng.integers(0, np.array(image.GetSize()), size=(5, 3)).tolist() + [[0, 0, 0]]:
        ras = (sform @ np.array([*index, 1.0]))[:3]
        lps = coordinates.ras_to_lps(ras)
        itk = image.TransformIndexToPhysicalPoint([int(i) for i in index])
        assert np.allclose(lps, itk, atol=1e-3), (index, lps, itk)
        assert np.allclose(coordinates.lps_to_ras(itk), ras, atol=1e-3)


def test_ras_bounds_become_the_lps_box_of_the_same_voxels(shared_data):
    path = shared_data / "totalseg" / "example_seg_dicom.nii.gz"
    sform, image = nifti_sform(path), sitk.ReadImage(str(path))
    size = np.array(image.GetSize())
    corners = [np.array(c, float) * (size - 1) for c in np.ndindex(2, 2, 2)]
    ras = np.array([(sform @ np.array([*c, 1.0]))[:3] for c in corners])
    bounds = [v for axis in range(3) for v in (ras[:, axis].min(), ras[:, axis].max())]
    box = coordinates.ras_bounds_to_lps_box(bounds)
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    assert np.allclose(box[:3], lps.min(axis=0), atol=1e-3)
    assert np.allclose(box[3:], lps.max(axis=0), atol=1e-3)


def test_box_overlap_and_bad_bounds():
    a = (0, 0, 0, 10, 10, 10)
    assert coordinates.boxes_overlap(a, (5, 5, 5, 20, 20, 20))
    assert not coordinates.boxes_overlap(a, (10, 0, 0, 20, 10, 10))  # touching is not overlapping
    assert not coordinates.boxes_overlap(a, (-30, -30, -30, -20, 5, 5))
    with pytest.raises(ValueError, match="empty"):
        coordinates.ras_bounds_to_lps_box([5, 1, 0, 1, 0, 1])
    assert coordinates.format_coordinates([1.5, -0.00001, -12.25]) == "1.5,0,-12.25"


# -- command lines ----------------------------------------------------------------------------------

def test_segment_arguments():
    args = commands.segment_args("in.nrrd", "demo-phantom-seg", "out.nii.gz", device="GPU", overlap=0.25,
                                 roi_lps=(-20.0, -5.0, 0.0, 10.0, 5.5, 30.0), structures=["liver", "spleen"],
                                 backbone=" kaiko-ai/coralbay@main ")
    assert args[:4] == ["segment", "in.nrrd", "--model", "demo-phantom-seg"]
    assert args[args.index("--output") + 1] == "out.nii.gz"
    assert args[args.index("--backbone") + 1] == "kaiko-ai/coralbay@main"
    assert "--backbone" not in commands.segment_args("in.nrrd", "m", "o.nii.gz", backbone="")
    assert args[args.index("--device") + 1] == ("mps" if sys.platform == "darwin" else "cuda")
    assert args[args.index("--overlap") + 1] == "0.25"
    assert "--roi=-20,-5,0,10,5.5,30" in args
    assert args[args.index("--structures") + 1] == "liver,spleen"
    assert args[-2:] == ["--progress", "jsonl"]
    assert commands.engine_device("CPU") == "cpu" and commands.engine_device("auto") == "auto"


@pytest.mark.parametrize("kwargs, message", [
    (dict(overlap=0.96), "overlap"), (dict(structures=[]), "at least one structure"),
    (dict(structures=["a,b"]), "commas"), (dict(device="TPU"), "Unknown device")])
def test_segment_arguments_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        commands.segment_args("in.nrrd", "m", "out.nii.gz", **kwargs)


def test_export_formats_are_the_engine_s():
    if importlib.util.find_spec("coralbay.export") is None:
        pytest.skip("the engine has no export on this branch yet (merge main)")
    from coralbay.export import FORMATS

    assert set(commands.EXPORT_FORMATS) == set(FORMATS)


def test_other_command_lines():
    assert commands.classify_args("ct.nrrd", "demo-phantom-cls", "r.json", device="CPU", point_lps=(1.0, -2.0, 3.5)) == [
        "classify", "ct.nrrd", "--model", "demo-phantom-cls", "--device", "cpu", "--output", "r.json",
        "--point=1,-2,3.5", "--progress", "jsonl"]
    assert commands.compare_args("p.nrrd", "r.nrrd", "out", image="ct.nrrd")[-4:] == [
        "--image", "ct.nrrd", "--progress", "jsonl"]
    assert commands.export_args("l.nrrd", "stl", "meshes") == [
        "export", "l.nrrd", "--format", "stl", "--output", "meshes", "--progress", "jsonl"]
    with pytest.raises(ValueError, match="DICOM series"):
        commands.export_args("l.nrrd", "dicom-seg", "seg.dcm")
    with pytest.raises(ValueError, match="Choose a model"):
        commands.classify_args("ct.nrrd", " ", "r.json")
    assert commands.phantom_args(7, "ct.nrrd", "labels.nrrd", spacing_mm=1.5, direction="LPS") == [
        "phantom", "--seed", "7", "--output", "ct.nrrd", "--labels", "labels.nrrd", "--spacing", "1.5",
        "--direction", "LPS"]
    assert commands.export_file_name("CT 1: liver/seg", "seg.nrrd") == "CT_1__liver_seg.seg.nrrd"
    assert commands.selected_structures(["a", "b"], ["b", "a"]) is None
    assert commands.selected_structures(["a", "b", "c"], ["c", "a"]) == ["a", "c"]


def _engine_has(command: str) -> bool:
    return importlib.util.find_spec(f"coralbay.commands.{command}") is not None


@pytest.mark.parametrize("command", ["segment", "classify", "compare", "export", "phantom", "teach"])
def test_command_lines_parse_with_the_real_engine(command):
    """Every command line the module builds is accepted by the engine's own parser."""
    if not _engine_has(command):
        pytest.skip(f"the engine has no `{command}` command on this branch yet (merge main)")
    from coralbay.cli import build_parser

    built = {
        "segment": lambda: commands.segment_args("in.nrrd", "m", "o.nii.gz", device="CPU", overlap=0.95,
                                                 roi_lps=(-10, -20.5, 0, 1, 1, 1), structures=["a"], backbone="o/n@r"),
        "classify": lambda: commands.classify_args("in.nrrd", "m", "r.json", device="GPU", point_lps=(-1, 2, -3),
                                                   backbone="w.safetensors"),
        "compare": lambda: commands.compare_args("p.nrrd", "r.nrrd", "out", image="ct.nrrd"),
        "export": lambda: commands.export_args("l.nrrd", "seg.nrrd", "x.seg.nrrd"),
        "phantom": lambda: commands.phantom_args(3, "ct.nrrd", "l.nrrd", spacing_mm=2, direction="RAS"),
        "teach": lambda: commands.teach_args("examples", "m", "my-organs", device="CPU", start_from="my-organs-1",
                                             minutes=2.5),
    }[command]()
    args = build_parser().parse_args(built)
    assert args.command == command and callable(args.run)
    assert command == "phantom" or args.progress == "jsonl"
    if command == "segment":
        assert (args.overlap, args.roi, args.structures, args.device, args.backbone) == (
            0.95, [-10, -20.5, 0, 1, 1, 1], "a", "cpu", "o/n@r")  # negative first values parse
    if command == "classify":
        assert args.point == [-1, 2, -3] and args.device in ("cuda", "mps") and args.backbone == "w.safetensors"
    if command == "teach":  # an incremental teach from the model taught before, with a time budget
        assert (args.start_from, args.minutes, args.name) == ("my-organs-1", 2.5, "my-organs")


# -- results ----------------------------------------------------------------------------------------

def test_metrics_table_columns_numbers_and_worst_error(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({
        "structures": [{"name": "liver", "dice": 0.91, "hd95_mm": 4.2, "tp": 100, "note": "text is dropped"},
                       {"name": "spleen", "dice": 0.0, "hd95_mm": None, "prediction_volume_ml": 0.0}],
        "worst_error_lps": [10.0, -20.0, 30.5]}))
    table = results.read_metrics(path)
    assert table.columns[:3] == ["name", "dice", "hd95_mm"]
    assert set(table.columns) == {"name", "dice", "hd95_mm", "prediction_volume_ml", "tp"}
    liver = dict(zip(table.columns, table.rows[0]))
    spleen = dict(zip(table.columns, table.rows[1]))
    assert liver["name"] == "liver" and liver["dice"] == 0.91 and liver["tp"] == 100.0
    assert math.isnan(liver["prediction_volume_ml"]) and math.isnan(spleen["hd95_mm"])
    assert table.worst_error_ras == (-10.0, 20.0, 30.5)


@pytest.mark.parametrize("content, message", [
    (None, "wrote no metrics file"), ("{not json", "not readable JSON"), ('{"structures": 3}', "no list")])
def test_broken_metrics_are_one_sentence(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(results.ResultError, match=message):
        results.read_metrics(path)


@pytest.mark.parametrize("report", [
    {"prediction": "malignant", "probabilities": {"benign": 0.3, "malignant": 0.7}, "input": "ct.nrrd"},
    {"classes": [{"name": "benign", "probability": 0.3}, {"class": "malignant", "score": 0.7}]},
])
def test_classification_reports(tmp_path, report):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    result = results.read_classification(path)
    assert result.rows == [("malignant", 0.7), ("benign", 0.3)]
    assert result.summary() == "malignant (probability 0.70)"


def test_label_table_sidecar_round_trip(tmp_path):
    term = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))
    table = LabelTable([Label(1, "liver", (221, 130, 101), term), Label(3, "spleen", (157, 108, 162))])
    label_map = tmp_path / "labels.nii.gz"
    sidecar = results.write_label_table(table, label_map)
    assert sidecar == tmp_path / "labels.labels.json"
    found = results.label_map_segments(label_map)
    assert [(s.value, s.name) for s in found] == [(1, "liver"), (3, "spleen")]
    assert found[0].color == pytest.approx((221 / 255, 130 / 255, 101 / 255))
    assert found[0].terminology == term.slicer_string() and found[1].terminology is None
    with pytest.raises(results.ResultError, match="no label table"):
        results.label_map_segments(tmp_path / "other.nrrd")


def test_output_path_prefers_the_result_event(tmp_path):
    assert results.output_path({"outputs": {"labels": "/x/l.nii.gz"}}, "labels", tmp_path / "d") == Path("/x/l.nii.gz")
    assert results.output_path(None, "labels", tmp_path / "d") == tmp_path / "d"


# -- segments -> label tables -----------------------------------------------------------------------

def test_terminology_survives_slicer_round_trip():
    term = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "64033007", "Kidney"),
                       ("SCT", "24028007", "Right"))
    assert segments.terminology_from_slicer_string(term.slicer_string()) == term
    plain = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))
    assert segments.terminology_from_slicer_string(plain.slicer_string()) == plain
    assert segments.terminology_from_slicer_string("") is None
    assert segments.terminology_from_slicer_string("ctx~^^~^^~^^") is None


def test_slicer_label_candidates_try_the_forms_of_slicers_anatomy_lists():
    """Slicer's terminologies name sides first, in lower case, with blanks ("left kidney")."""
    assert segments.slicer_label_candidates("kidney_left") == ["kidney_left", "kidney left", "left kidney"]
    assert segments.slicer_label_candidates(" Adrenal-Gland  RIGHT ") == [
        "Adrenal-Gland RIGHT", "adrenal-gland right", "adrenal gland right", "right adrenal gland"]
    assert segments.slicer_label_candidates("liver") == ["liver"]
    assert segments.slicer_label_candidates("left") == ["left"] and segments.slicer_label_candidates("  ") == []
    table = LabelTable([Label(1, "Liver", (1, 2, 3))])
    assert segments.find_label(table, " liver ").value == 1 and segments.find_label(table, "spleen") is None
    assert segments.find_label(None, "liver") is None


def test_label_table_for_segments_keeps_remembered_values(tmp_path):
    kidney = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "64033007", "Kidney"))
    values = segments.export_values(["4", None, "4", "x", "2"])  # repeated and broken tags are reassigned
    assert values == [4, 1, 3, 5, 2]
    table = segments.label_table_for_segments(
        [("kidney", (1.0, 0.5, 0.0), kidney.slicer_string()), ("", (0, 1, 0), None)], values=[4, 1])
    assert [(lab.value, lab.name, lab.color) for lab in table] == [
        (4, "kidney", (255, 128, 0)), (1, "Segment 2", (0, 255, 0))]
    assert table.by_value(4).terminology == kidney
    assert [lab.value for lab in segments.label_table_for_segments([("a", (0, 0, 0), None), ("b", (0, 0, 0), None)])] == [1, 2]
    with pytest.raises(ValueError, match="Two segments are named 'Kidney'"):
        segments.label_table_for_segments([("kidney", (0, 0, 0), None), ("Kidney", (0, 0, 0), None)])
    results.write_label_table(table, tmp_path / "x.nrrd")
    assert load_label_table(tmp_path / "x.labels.json").to_dict() == table.to_dict()
    colors = segments.label_table_for_colors([(0, "background", (0, 0, 0)), (4, "nodule", (1, 0, 0))])
    assert [(lab.value, lab.name) for lab in colors] == [(4, "nodule")]


# -- dependencies -----------------------------------------------------------------------------------

def test_requirements_are_pinned_and_never_slicer_s_own():
    for req in dependencies.REQUIREMENTS:
        assert "==" in req.pip, f"{req.pip} is not pinned"
        assert req.distribution not in dependencies.PROTECTED, req.pip
    assert {"numpy", "simpleitk", "vtk", "pydicom", "torch"} <= set(dependencies.PROTECTED)


def test_missing_requirements_in_this_python():
    assert dependencies.missing_requirements() == []  # the test environment has the engine's dependencies
    fake = dependencies.Requirement("coralbay_no_such_module", "coralbay-no-such-module==1.0")
    assert dependencies.missing_requirements([fake]) == [fake]
    assert not dependencies.torch_missing()
    assert dependencies.missing_from_slicer() == []


def test_constraints_pin_the_installed_protected_packages():
    pins = dict(line.split("==") for line in dependencies.constraints().splitlines())
    assert pins["numpy"] == np.__version__
    for name in ("SimpleITK", "pydicom", "torch", "vtk"):  # all installed here as distributions
        assert pins[dependencies.normalize(name)] == importlib.metadata.version(name)


def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


def test_install_plan_that_replaces_numpy_is_refused(tmp_path):
    """A real `pip install --dry-run --report` (offline, from a local wheel) planning a numpy change."""
    _fake_wheel(tmp_path, "numpy", "99.0")
    report = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
                           "--find-links", str(tmp_path), "--report", str(report), "numpy==99.0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with pytest.raises(dependencies.DependencyError, match=r"replace Slicer's own numpy 99\.0"):
        dependencies.check_plan(report.read_text())
    dependencies.check_plan(json.dumps({"install": [{"metadata": {"name": "einops", "version": "0.8.1"}}]}))
    install = dependencies.pip_install_args(list(dependencies.REQUIREMENTS[:1]), "c.txt")
    assert install == ["--constraint", "c.txt", "--no-warn-script-location", dependencies.REQUIREMENTS[0].pip]
    assert dependencies.pip_dry_run_args(install, "r.json") == [
        "install", "--dry-run", "--quiet", "--report", "r.json", *install]


def test_gpu_summary_with_the_real_torch():
    import torch

    summary = dependencies.gpu_summary(torch)
    assert summary.startswith("GPU found" if torch.cuda.is_available() else ("Apple", "No GPU found"))


# -- catalog entries --------------------------------------------------------------------------------

def test_catalog_entries_from_json_and_objects():
    entry = models.entry_from_catalog({"name": "demo-phantom-seg", "title": "Phantom organs", "task": "segmentation",
                                       "path": "/b", "labels": [{"value": 1, "name": "liver"}, "spleen"]})
    assert entry.structures == ["liver", "spleen"] and entry.segments and not entry.classifies
    assert entry.display_name() == "Phantom organs (segmentation)"

    class Bundle:
        def __init__(self):
            self.name, self.title, self.task, self.labels = "cls", "", "classification", []

    other = models.entry_from_catalog(Bundle())
    assert other.classifies and other.display_name() == "cls (classification)"
    with pytest.raises(ValueError, match="no name"):
        models.entry_from_catalog({"title": "x"})


def test_catalog_of_the_real_engine(tmp_path, monkeypatch):
    """The module's list equals the engine's catalog (what `coralbay models --json` prints), and a
    bundle added through the module is listed afterwards."""
    if importlib.util.find_spec("coralbay.bundle.catalog") is None:
        pytest.skip("the engine has no catalog on this branch yet (merge main)")
    from coralbay.bundle import catalog

    monkeypatch.setenv("CORALBAY_HOME", str(tmp_path / "home"))
    before = models.list_models()
    assert [e.name for e in before] == [m.summary()["name"] for m in catalog.list_models()]
    bundle = tmp_path / "my-bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(Exception, match="manifest is invalid"):
        models.add_model(str(bundle))
    with pytest.raises(ValueError, match="Choose a model bundle folder"):
        models.add_model("  ")
    assert models.list_models() == before


# -- delivering outputs, sample data ----------------------------------------------------------------

def test_deliver_replaces_files_and_folders_atomically(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.seg.nrrd").write_bytes(b"new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.seg.nrrd").write_bytes(b"old")
    files.deliver(tmp_path / "run" / "a.seg.nrrd", tmp_path / "out" / "a.seg.nrrd")
    assert (tmp_path / "out" / "a.seg.nrrd").read_bytes() == b"new"
    meshes = tmp_path / "run" / "meshes"
    meshes.mkdir()
    (meshes / "liver.stl").write_bytes(b"solid")
    files.deliver(meshes, tmp_path / "out" / "meshes")
    assert (tmp_path / "out" / "meshes" / "liver.stl").read_bytes() == b"solid"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.seg.nrrd", "meshes"]  # no partial files
    with pytest.raises(FileNotFoundError, match="did not write"):
        files.deliver(tmp_path / "run" / "missing.nii.gz", tmp_path / "out" / "x.nii.gz")


def test_phantom_cache_paths(tmp_path):
    ct, labels = sample_data.phantom_files(tmp_path, 3)
    assert ct.parent == labels.parent
    assert ct.parent.parent == tmp_path / "CoralBay" and ct.parent.name.startswith("phantom-seed-3-")
    assert not sample_data.phantom_cached(tmp_path, 3)
    ct.parent.mkdir(parents=True)
    ct.write_bytes(b"x")
    labels.write_bytes(b"y")
    assert sample_data.phantom_cached(tmp_path, 3)


def test_slicer_default_terminology_is_not_a_chosen_code():
    """Slicer gives every new segment Tissue / Tissue; whatever the context names of the version."""
    default_5x = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~"
                  "SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^")
    assert segments.is_unset_terminology(default_5x)
    assert segments.is_unset_terminology("~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~~^^~^^")
    assert segments.is_unset_terminology("") and segments.is_unset_terminology(None)
    liver = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))
    assert not segments.is_unset_terminology(liver.slicer_string(), default_5x)
    tumour_in_tissue = Terminology(("SCT", "85756007", "Tissue"), ("SCT", "85756007", "Tissue"), ("SCT", "7771000", "Left"))
    assert not segments.is_unset_terminology(tumour_in_tissue.slicer_string())  # a modifier was chosen
    other_default = "ctx~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^~x~^^~^^"
    assert segments.is_unset_terminology(other_default, other_default)  # what this Slicer gives new segments

"""Every bad input of the engine issue: one clear sentence, a non-zero exit code, nothing written."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.cli import main


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def ct_volume(shape=(16, 16, 16), value=40, dtype=np.int16) -> sitk.Image:
    """Air (-1000 HU) around a block of soft tissue (`value`), 4 mm voxels."""
    array = np.full(shape, -1000 if np.issubdtype(dtype, np.signedinteger) else 0, dtype)
    array[tuple(slice(s // 4, s - s // 4) for s in shape)] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    return image


def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, fragment the error sentence must contain)."""
    good = write(ct_volume(), folder / "good.nii.gz")
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = folder / "garbage.nrrd"
    garbage.write_bytes(b"\x00\x01not an image at all" * 10)
    empty_file = folder / "empty.nii.gz"
    empty_file.write_bytes(b"")
    two_d = write(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), folder / "two_d.nii.gz")
    frames = [sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16)) for _ in range(3)]
    four_d = write(sitk.JoinSeries(frames), folder / "four_d.nii.gz")  # e.g. a 4D perfusion series
    rgb = write(sitk.GetImageFromArray(np.zeros((8, 8, 8, 3), np.uint8), isVector=True), folder / "rgb.nrrd")
    single = write(ct_volume((1, 16, 16)), folder / "single_slice.nii.gz")
    nan = np.full((8, 8, 8), -1000, np.float32)
    nan[4, 4, 4] = np.nan  # NRRD keeps NaN; ITK's NIfTI reader turns it into 0
    write(sitk.GetImageFromArray(nan), folder / "nan.nrrd")
    return {
        "missing": (folder / "does_not_exist.nii.gz", "does not exist"),
        "truncated": (truncated, "cut short"),
        "garbage": (garbage, "cannot be read"),
        "empty file": (empty_file, "is empty"),
        "2D": (two_d, "2D image; a 3D volume is needed"),
        "4D": (four_d, "4D image; a 3D volume is needed"),
        "multi-component": (rgb, "3 components per voxel"),
        "single slice": (single, "single slice"),
        "NaN": (folder / "nan.nrrd", "NaN"),
        "empty DICOM folder": (folder, "holds no DICOM image series"),
    }


def assert_clean_failure(code: int, err: str, fragment: str, out_dir: Path, before: set[str],
                         exit_code: int = 1) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == exit_code
    assert len(lines) == 1 and lines[0].startswith("coralbay: error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert {p.name for p in out_dir.iterdir()} == before, "nothing may be written or left behind"


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return make_bad_inputs(folder)


@pytest.mark.parametrize("name", ["missing", "truncated", "garbage", "empty file", "2D", "4D",
                                  "multi-component", "single slice", "NaN", "empty DICOM folder"])
def test_bad_volume_is_refused_by_segment(name, bad_inputs, tiny_seg_bundle, tmp_path, capsys):
    path, fragment = bad_inputs[name]
    code = main(["segment", str(path), "-m", str(tiny_seg_bundle), "-o", str(tmp_path / "out.nii.gz"),
                 "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, fragment, tmp_path, set())


def bundle_variant(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    change(dst)
    return dst


def _corrupt_weights(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _edit_manifest(edit):
    def change(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        edit(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return change


@pytest.mark.parametrize("name,change,fragment", [
    ("missing bundle", None, "does not exist"),
    ("not JSON", lambda f: (f / "manifest.json").write_text("{broken"), "not readable JSON"),
    ("checksum", _corrupt_weights, "does not match its checksum"),
    ("does not fit", _edit_manifest(lambda m: m["architecture"].update(feature_size=12)), "declared architecture needs"),
    ("missing weights", lambda f: (f / "model.safetensors").unlink(), "missing from the bundle"),
    ("wrong task", _edit_manifest(lambda m: m.update(task="classification", classes=["a", "b"])), "lack"),
])
def test_bad_bundle_is_refused(name, change, fragment, bad_inputs, tiny_seg_bundle, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bundle = tmp_path / "nonexistent-bundle" if change is None else bundle_variant(tiny_seg_bundle, tmp_path / "b", change)
    good = bad_inputs["missing"][0].parent / "good.nii.gz"
    code = main(["segment", str(good), "-m", str(bundle), "-o", str(out_dir / "out.nii.gz"), "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, fragment, out_dir, set())


def test_classification_bundle_is_refused_for_segment(bad_inputs, tiny_cls_bundle, tmp_path, capsys):
    good = bad_inputs["missing"][0].parent / "good.nii.gz"
    code = main(["segment", str(good), "-m", str(tiny_cls_bundle), "-o", str(tmp_path / "o.nii.gz"), "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, "is a classification model", tmp_path, set())


def test_unavailable_device_is_refused(bad_inputs, tiny_seg_bundle, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    good = bad_inputs["missing"][0].parent / "good.nii.gz"
    code = main(["segment", str(good), "-m", str(tiny_seg_bundle), "-o", str(tmp_path / "o.nii.gz"),
                 "--device", "cuda", "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, "no CUDA GPU is available", tmp_path, set())


def test_existing_output_survives_a_failed_run(bad_inputs, tiny_seg_bundle, tmp_path, capsys):
    previous = tmp_path / "out.nii.gz"
    previous.write_bytes(b"previous result")
    code = main(["segment", str(bad_inputs["NaN"][0]), "-m", str(tiny_seg_bundle), "-o", str(previous), "--progress", "none"])
    assert code == 1 and previous.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


@pytest.mark.parametrize("args,fragment", [
    (["segment", "x.nii.gz", "-o", "y.nii.gz"], "the following arguments are required: --model"),
    (["segment", "x.nii.gz", "-m", "m", "-o", "y.nii.gz", "--roi", "1,2,3"], "--roi must be 6 numbers"),
    (["segment", "x.nii.gz", "-m", "m", "-o", "y.nii.gz", "--overlap", "1.5"], "overlap must be from 0 to 0.95"),
    (["classify", "x.nii.gz", "-m", "m", "-o", "r.json", "--point", "a,b,c"], "--point must be 3 numbers"),
])
def test_usage_errors_exit_2_in_a_real_process(args, fragment, cli):
    result = cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_process_exit_code_and_jsonl_error_event(bad_inputs, tiny_seg_bundle, tmp_path, cli):
    result = cli("segment", bad_inputs["2D"][0], "-m", tiny_seg_bundle, "-o", tmp_path / "o.nii.gz", "--progress", "jsonl")
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "error" and "3D volume is needed" in events[-1]["message"]
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "o.nii.gz").exists()


def test_point_outside_volume_and_bad_report_name(bad_inputs, tiny_cls_bundle, tmp_path, capsys):
    good = str(bad_inputs["missing"][0].parent / "good.nii.gz")
    code = main(["classify", good, "-m", str(tiny_cls_bundle), "-o", str(tmp_path / "r.json"),
                 "--point", "500,500,500", "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, "lies outside the volume", tmp_path, set())
    code = main(["classify", good, "-m", str(tiny_cls_bundle), "-o", str(tmp_path / "r.txt"), "--progress", "none"])
    assert_clean_failure(code, capsys.readouterr().err, "must end in .json", tmp_path, set(), exit_code=2)


def test_info_warns_on_non_ct_intensities(tmp_path, capsys):
    path = write(ct_volume(value=3, dtype=np.uint8), tmp_path / "mr_like.nii.gz")
    assert main(["info", str(path)]) == 0
    assert "do not look like CT" in capsys.readouterr().out

"""`coralbay segment` killed (SIGKILL) at each stage: the previous result stays whole, nothing torn appears."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli_env


@pytest.fixture(scope="module")
def ct_and_previous(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    array = np.full((20, 24, 24), -1000, np.int16)
    array[4:16, 4:20, 4:20] = 50
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(folder / "ct.nrrd"))
    return folder / "ct.nrrd"


@pytest.mark.parametrize("stage", ["load", "preprocess", "inference", "write"])
def test_kill_at_stage_keeps_previous_result(stage, ct_and_previous, tiny_seg_bundle, tmp_path):
    out = tmp_path / "labels.nii.gz"
    table = tmp_path / "labels.labels.json"
    out.write_bytes(b"previous label map")
    table.write_text('{"labels": []}')
    child = subprocess.Popen([sys.executable, "-m", "coralbay", "segment", str(ct_and_previous), "-m",
                              str(tiny_seg_bundle), "-o", str(out), "--progress", "jsonl"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env())
    try:
        for line in child.stdout:
            event = json.loads(line)
            if event.get("stage") == stage or event["event"] in ("result", "error"):
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["labels.labels.json", "labels.nii.gz"]
    if out.read_bytes() != b"previous label map":  # the new pair was complete before the kill
        assert sitk.ReadImage(str(out)).GetSize() == (24, 24, 20)
        assert json.loads(table.read_text())["labels"]
    else:
        assert table.read_text() == '{"labels": []}'

"""The panel's Engine choice on REAL slicer-core: the module's Logic with Remote chosen sends segment,
classify and interactive work to a real `coralbay serve` on 127.0.0.1 and gives the local engine's answers
(same labels, same probabilities, same masks); a wrong token is one sentence; compare/export/teach stay local.
One server, the tiny bundle, the small interactive phantom."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, cryptography) is not installed")

from conftest import REPO  # noqa: E402
from serve_support import served_phantom  # noqa: E402
from test_slicer_module import _segment_names, module  # noqa: E402,F401 (fixture)

TIMEOUT_S = 180
UI_FILE = REPO / "Resources" / "UI" / "CoralBaySlicer.ui"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_seg_bundle, tiny_cls_bundle):
    folder = tmp_path_factory.mktemp("slicer-remote")
    running, tokens, ct, labels = served_phantom(folder, [tiny_seg_bundle, tiny_cls_bundle, "demo-phantom-cls"],
                                                 ("alice",))
    yield {"url": running.url, "token": tokens["alice"], "ct": ct, "labels": labels, "bundle": tiny_seg_bundle,
           "classifier": tiny_cls_bundle, "folder": folder}
    running.stop()


def _labelmap(segmentation, ct) -> np.ndarray:
    """The segmentation as one label map on the CT's grid (segment i+1 -> value i+1)."""
    import slicer

    names = _segment_names(segmentation)
    out = np.zeros(slicer.util.arrayFromVolume(ct).shape, np.uint8)
    seg = segmentation.GetSegmentation()
    for i, name in enumerate(names):
        out[slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, seg.GetSegmentIdBySegmentName(name), ct) > 0] = i + 1
    return out


def _segment(logic, ct, model):
    job = logic.segment(ct, model, device="CPU", overlap=0.0)
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", (job.error, job.full_log())
    return job.value


def test_segment_through_the_remote_engine_gives_the_local_labels(module, server):
    import slicer

    ct = slicer.util.loadVolume(str(server["ct"]), {"name": "CT"})
    logic = module.CoralBaySlicerLogic()
    local = _segment(logic, ct, str(server["bundle"]))
    sentence = logic.useRemoteEngine(server["url"], server["token"])
    assert "Compare, Export" in sentence and "Teach" in sentence
    try:
        assert logic.jobRunner("comparison") is logic.runner()          # compare/export/teach stay local
        remote = _segment(logic, ct, "tiny-seg")
    finally:
        logic.useLocalEngine()
    assert _segment_names(remote) == _segment_names(local)
    local_map, remote_map = _labelmap(local, ct), _labelmap(remote, ct)
    assert local_map.any() and np.array_equal(local_map, remote_map)
    # the token is kept in memory only: the saved scene (parameter node included) does not hold it
    logic.getParameterNode()
    slicer.mrmlScene.SetSaveToXMLString(1)
    slicer.mrmlScene.Commit()
    scene = slicer.mrmlScene.GetSceneXMLString()
    assert "vtkMRMLScriptedModuleNode" in scene or "ScriptedModule" in scene
    assert server["token"] not in scene


def _classify(logic, ct, model, point):
    job = logic.classify(ct, model, device="CPU", pointNode=point)
    logic.wait(TIMEOUT_S)
    assert job.state == "succeeded", (job.error, job.full_log())
    return job.value[1].rows


def test_classify_around_a_point_through_the_remote_engine_gives_the_local_report(module, server):
    import slicer

    ct = slicer.util.loadVolume(str(server["ct"]), {"name": "CT"})
    b = [0.0] * 6
    ct.GetRASBounds(b)
    point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion")
    point.AddControlPoint([(b[0] + b[1]) / 2 + 10, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2])
    logic = module.CoralBaySlicerLogic()
    local = _classify(logic, ct, str(server["classifier"]), point)
    logic.useRemoteEngine(server["url"], server["token"])
    try:
        remote = _classify(logic, ct, "tiny-cla", point)
    finally:
        logic.useLocalEngine()
    assert [name for name, _p in remote] == [name for name, _p in local]
    assert sorted(name for name, _p in local) == ["negative", "positive"]
    assert [p for _n, p in remote] == pytest.approx([p for _n, p in local], abs=1e-6)


def test_a_long_remote_classification_asks_first_and_runs_when_confirmed(module, server):
    """The demo classifier over the whole small phantom is estimated at minutes: the server's job
    is refused at once with needs_confirmation (the panel's "Run it anyway?"), and run again with
    allowLongRun it passes the estimate and classifies windows (cancelled there)."""
    import time

    import slicer

    ct = slicer.util.loadVolume(str(server["ct"]), {"name": "CT"})
    logic = module.CoralBaySlicerLogic()
    logic.useRemoteEngine(server["url"], server["token"])
    try:
        refused = logic.classify(ct, "demo-phantom-cls", device="CPU")
        logic.wait(TIMEOUT_S)
        assert refused.state == "failed" and refused.needs_confirmation, (refused.state, refused.error)
        assert "windows" in refused.error
        confirmed = logic.classify(ct, "demo-phantom-cls", device="CPU", allowLongRun=True)
        deadline = time.monotonic() + TIMEOUT_S
        while confirmed.run.fraction <= 0.2:   # load and preprocess are the first 20 %: windows now run
            assert not confirmed.run.finished and time.monotonic() < deadline, (confirmed.state, confirmed.error)
            logic.poll()
            time.sleep(0.2)
        logic.cancelJob()
        assert confirmed.state == "cancelled"
    finally:
        logic.useLocalEngine()


def _click_and_accept(logic, ct, lps, folder):
    from CoralBaySlicerLib import coordinates
    import slicer

    opened = logic.startInteractive(ct, "tiny-seg" if logic.remoteEngine() else str(folder["bundle"]),
                                    device="CPU", examplesFolder=folder["examples"])
    for request in (opened, logic.startStructure("liver", propose=False)):
        assert logic.waitInteractive(request, TIMEOUT_S)["event"] == "result"
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    points.AddControlPoint(list(coordinates.lps_to_ras(lps)))
    click = logic.waitInteractive(logic.addInteractivePoints(points, True)[0], TIMEOUT_S)
    assert click["event"] == "result", click
    accepted = logic.waitInteractive(logic.interactiveAccept(), TIMEOUT_S)
    assert accepted["event"] == "result", accepted
    output = logic.interactive.segmentation
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(
        output, output.GetSegmentation().GetSegmentIdBySegmentName("liver"), ct) > 0
    logic.closeInteractive()
    return mask


def test_interactive_open_click_accept_remote_equals_local(module, server, tmp_path):
    import SimpleITK as sitk
    import slicer

    truth = sitk.ReadImage(str(server["labels"]))
    zyx = np.argwhere(sitk.GetArrayFromImage(truth) == 1)
    inside = zyx[len(zyx) // 2]
    lps = [float(c) for c in truth.TransformIndexToPhysicalPoint([int(i) for i in inside[::-1]])]
    ct = slicer.util.loadVolume(str(server["ct"]), {"name": "CT"})
    logic = module.CoralBaySlicerLogic()
    local = _click_and_accept(logic, ct, lps, {"bundle": server["bundle"], "examples": tmp_path / "local"})
    logic.useRemoteEngine(server["url"], server["token"])
    try:
        remote = _click_and_accept(logic, ct, lps, {"examples": tmp_path / "remote"})
    finally:
        logic.useLocalEngine()
    assert local.any() and np.array_equal(local, remote)


def test_engine_section_connects_tests_and_says_what_runs_where(module, server):
    """The panel's Engine section (Qt emulated, Logic real) against the server: Test connection shows
    the server's sentence, a wrong token one sentence without the token, Remote switches the Logic,
    an unusable setting falls back to Local and says why."""
    import ui_loader
    from CoralBaySlicerLib.remote_runner import ENGINE_CHOICES, LOCAL_ONLY_SENTENCE
    from CoralBaySlicerScene.engine_section import LOCAL_SENTENCE, EngineSection

    ui = ui_loader.childWidgetVariables(UI_FILE)
    ui.engineComboBox.addItems(ENGINE_CHOICES)  # what the parameter node's Choice fills in
    logic = module.CoralBaySlicerLogic()
    changes = []
    EngineSection(ui, logic, lambda: changes.append(logic.availableModels()))
    ui.remoteUrlLineEdit.text, ui.remoteTokenLineEdit.text = server["url"], "not-the-token"
    ui.testConnectionButton.click()
    refused = ui.engineStatusLabel.text
    assert refused and "\n" not in refused and "not-the-token" not in refused and logic.remoteEngine() is None

    ui.remoteTokenLineEdit.text = server["token"]
    ui.testConnectionButton.click()
    assert "alice" in ui.engineStatusLabel.text and "tiny-cla" in ui.engineStatusLabel.text
    try:
        ui.engineComboBox.activate(ENGINE_CHOICES.index("Remote"))
        assert ui.engineStatusLabel.text == LOCAL_ONLY_SENTENCE and logic.remoteEngine() is not None
        assert sorted(m.name for m in changes[-1]) == ["demo-phantom-cls", "tiny-cla", "tiny-seg"]  # the server's models
        ui.remoteCaFileLineEdit.text = "/nonexistent/ca.pem"
        ui.remoteCaFileLineEdit.emit("editingFinished()")
        assert "was not found" in ui.engineStatusLabel.text and logic.remoteEngine() is None
        ui.remoteCaFileLineEdit.text = ""
        ui.remoteCaFileLineEdit.emit("editingFinished()")
        assert logic.remoteEngine() is not None
    finally:
        ui.engineComboBox.activate(ENGINE_CHOICES.index("Local"))
    assert ui.engineStatusLabel.text == LOCAL_SENTENCE and logic.remoteEngine() is None


def test_a_wrong_token_is_one_sentence(module, server):
    from CoralBaySlicerLib.remote_client import RemoteError

    logic = module.CoralBaySlicerLogic()
    assert "alice" in logic.testConnection(server["url"], server["token"])
    with pytest.raises(RemoteError) as refused:
        logic.testConnection(server["url"], "not-the-token")
    message = str(refused.value)
    assert refused.value.status == 401 and "\n" not in message and message.endswith(".")
    assert "not-the-token" not in message

"""The module's Interactive section (Logic) on REAL Slicer code: slicer-core's scene, markups
fiducial nodes, segmentation nodes and Segmentations logic; only the Qt application is emulated
(Testing/Python/slicer_emulation). The engine is a real `coralbay interact` process (demo encoder,
small phantom as in test_interactive.py); clicks come from the simulated user on the phantom truth.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from coralbay.interactive import simulate as S
from conftest import REPO, write_interactive_phantom
from CoralBaySlicerLib import coordinates
from test_slicer_module import (  # noqa: F401 (fixture)
    _added, _load_test_terminology, _nodes, _segment_ids, _segment_names, module)

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slicer-interactive")
    ct, labels = write_interactive_phantom(folder)
    return ct, labels, folder


def _answer(logic, request_id) -> dict:
    event = logic.waitInteractive(request_id, TIMEOUT_S)
    assert event["event"] == "result", event
    return event


def _preview(logic, ct) -> np.ndarray:
    import slicer

    state = logic.interactive
    return slicer.util.arrayFromSegmentBinaryLabelmap(state.segmentation, state.previewId, ct) > 0


def _click(points_pos, points_neg, click) -> None:
    node = points_pos if click.positive else points_neg
    node.AddControlPoint(list(coordinates.lps_to_ras(click.lps)))


def test_interactive_clicks_strokes_undo_accept_on_real_markups_and_segments(module, small_phantom):
    import slicer

    ct_file, labels_file, folder = small_phantom
    image = sitk.ReadImage(str(ct_file))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file))) == 1
    ct = slicer.util.loadVolume(str(ct_file), {"name": "CT"})
    positive = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    negative = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")
    logic = module.CoralBaySlicerLogic()
    before = _nodes()
    with pytest.raises(ValueError, match="Start an interactive session first"):
        logic.startStructure("liver")
    opened = logic.startInteractive(ct, "demo-phantom-seg", device="CPU", examplesFolder=folder / "examples")
    assert logic.interactive.session.alive and logic.interactiveTimer.isActive()
    assert _added(before) == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1}
    output = logic.interactive.segmentation
    _answer(logic, opened)
    _answer(logic, logic.startStructure("liver"))

    # clicks from the simulated user, as real control points; each answer replaces the preview
    prediction, dice, previews = None, [], []
    for _ in range(3):
        click = S.next_click(prediction, liver, image)
        _click(positive, negative, click)
        sent = logic.addInteractivePoints(positive, True) + logic.addInteractivePoints(negative, False)
        assert len(sent) == 1  # only the new control point goes
        answer = _answer(logic, sent[0])
        prediction = _preview(logic, ct)
        engine_mask = sitk.GetArrayFromImage(sitk.ReadImage(answer["mask"])) > 0
        assert prediction.shape == engine_mask.shape and np.array_equal(prediction, engine_mask)
        assert len(_segment_ids(output.GetSegmentation())) == 1  # updated in place
        previews.append(prediction)
        dice.append(S.dice(prediction, liver))
    print("Dice after clicks 1-3:", [round(d, 3) for d in dice])
    # The first click's full-resolution region already holds most of the liver (docs/interactive.md):
    # later clicks must change the answer without losing it.
    assert min(dice) > 0.75 and not np.array_equal(previews[0], previews[-1]), dice
    assert _segment_names(output) == ["liver (preview)"]

    # undo restores the previous preview, redo brings the last one back
    _answer(logic, logic.interactiveUndo())
    assert np.array_equal(_preview(logic, ct), previews[1])
    _answer(logic, logic.interactiveRedo())
    assert np.array_equal(_preview(logic, ct), previews[2])

    # a point outside the volume: one sentence, nothing sent
    positive.AddControlPoint([5000.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="lies outside the volume CT"):
        logic.addInteractivePoints(positive, True)
    positive.RemoveNthControlPoint(positive.GetNumberOfControlPoints() - 1)

    # a painted stroke (a real segment of another segmentation) as a positive scribble
    strokes = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "strokes")
    strokes.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    stroke_id = strokes.GetSegmentation().AddEmptySegment("", "stroke")
    # box and refine through the Logic: refused in one sentence before anything is sent
    with pytest.raises(ValueError, match="Draw a box"):
        logic.addInteractiveBox(None)
    with pytest.raises(ValueError, match="Choose the segment to send"):
        logic.refineSegment(None, "")
    with pytest.raises(ValueError, match="The segment stroke is empty: choose a segment with voxels"):
        logic.refineSegment(strokes, stroke_id)
    with pytest.raises(ValueError, match="The segment stroke is empty: paint a stroke first"):
        logic.addInteractiveStroke(strokes, stroke_id, True)
    assert not logic.interactive.session.busy
    painted = np.zeros(liver.shape, np.uint8)
    inside = np.argwhere(liver & ~previews[2])
    painted[tuple(inside[: max(1, len(inside) // 4)].T)] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, strokes, stroke_id, ct)
    stroked = _answer(logic, logic.addInteractiveStroke(strokes, stroke_id, True))
    assert np.array_equal(_preview(logic, ct), sitk.GetArrayFromImage(sitk.ReadImage(stroked["mask"])) > 0)
    final = _preview(logic, ct)

    # accept: a named segment with the known structure's colour and terminology, value tag
    accepted = _answer(logic, logic.interactiveAccept())
    assert accepted["voxels"] == int(final.sum())
    assert _segment_names(output) == ["liver"]
    liver_id = _segment_ids(output.GetSegmentation())[0]
    segment = output.GetSegmentation().GetSegment(liver_id)
    entry = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), entry) and "10200004" in str(entry)
    assert segment.GetColor() == pytest.approx((221 / 255, 130 / 255, 101 / 255), abs=1e-3)
    accepted_mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, liver_id, ct) > 0
    assert np.array_equal(accepted_mask, final)
    with pytest.raises(ValueError, match="already has a segment named liver"):
        logic.startStructure("liver")

    # the points belong to the accepted structure: cleared as the panel does on Accept
    positive.RemoveAllControlPoints()
    negative.RemoveAllControlPoints()

    # the engine process dies: the next structure still works, the accepted segment is untouched
    os.kill(logic.interactive.session.pid, signal.SIGKILL)
    _answer(logic, logic.startStructure("spleen"))
    spleen = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file))) == 2
    click = S.next_click(None, spleen, image)
    _click(positive, negative, click)
    sent = logic.addInteractivePoints(positive, True)
    assert len(sent) == 1
    _answer(logic, sent[0])
    assert logic.interactive.session.restarts == 1
    assert _segment_names(output) == ["liver", "spleen (preview)"]
    assert logic.nextStructureName(["liver", "spleen", "kidney_left"]) == "kidney_left"  # accepted, in progress
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(output, liver_id, ct) > 0, final)
    # ... and the new engine process has the liver accepted again (restored from the examples folder):
    # it is negative evidence for the spleen and is in the engine's label map of accepted structures.
    status = logic.interactive.session.ask("status", timeout=TIMEOUT_S)
    assert [(s["name"], s["accepted"]) for s in status["structures"]] == [("liver", True), ("spleen", False)]
    restored = logic.interactive.session.ask("labels", path=str(folder / "accepted.nii.gz"), timeout=TIMEOUT_S)
    assert restored["structures"] == {"liver": accepted["value"]}
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(restored["path"])) == accepted["value"], final)

    # naming another structure drops the unaccepted preview, never the accepted segment; a late
    # answer for the structure left behind does not come back as the new structure's preview
    click = S.next_click(None, spleen, image)
    negative.AddControlPoint(list(coordinates.lps_to_ras(click.lps)))
    late = logic.addInteractivePoints(negative, False)[0]
    started = logic.startStructure("kidney_left")
    assert logic.waitInteractive(late, TIMEOUT_S)["name"] == "spleen"
    _answer(logic, started)
    assert _segment_names(output) == ["liver"]

    # the model codes kidney_left itself; a name it does not know, typed, takes the code and the
    # recommended colour of Slicer's loaded terminology (a context written by the test)
    context = _load_test_terminology(folder)
    assert context not in logic.interactive.terminology and "64033007" in logic.interactive.terminology
    _answer(logic, logic.startStructure("Gallbladder"))
    assert logic.interactive.terminology.startswith(f"{context}~SCT^123037004^Anatomical Structure~SCT^28231008^")
    assert logic.interactive.color == pytest.approx((139 / 255, 150 / 255, 98 / 255))

    logic.closeInteractive()
    assert _segment_names(output) == ["liver"] and logic.interactive is None and not logic.interactiveTimer.isActive()

    # a new session on the same scan, into a new segmentation: the engine restores the accepted liver
    # from the examples folder and the logic imports it as an accepted segment (nothing lost)
    reopened = logic.startInteractive(ct, "demo-phantom-seg", device="CPU", examplesFolder=folder / "examples")
    assert _answer(logic, reopened)["accepted"] == {"liver": accepted["value"]}
    restoring = list(logic.interactive.restoring)
    assert len(restoring) == 1
    _answer(logic, restoring[0])
    fresh = logic.interactive.segmentation
    assert fresh is not output and _segment_names(fresh) == ["liver"]
    restored_id = _segment_ids(fresh.GetSegmentation())[0]
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(fresh, restored_id, ct) > 0, final)
    assert fresh.GetSegmentation().GetSegment(restored_id).GetColor() == pytest.approx(
        (221 / 255, 130 / 255, 101 / 255), abs=1e-3)
    logic.closeInteractive()


def test_teach_model_runs_in_the_background_and_the_model_joins_the_list(module, small_phantom, tmp_path, monkeypatch):
    """Teach model on real slicer-core: refused without examples, then a background job (the GUI
    polls; the job's progress reaches the callback) whose model is in the catalog when it ends;
    a second model of the same name is refused before anything runs."""
    from coralbay.bundle.loader import load_bundle
    from coralbay.interactive.features import cache_key, encoder_digest, scan_digest
    from coralbay.io.example_masks import write_accepted
    from coralbay.vocabulary import JobState

    monkeypatch.setenv("CORALBAY_HOME", str(tmp_path / "home"))
    ct_file, labels_file, _ = small_phantom
    logic = module.CoralBaySlicerLogic()
    examples = tmp_path / "examples"
    with pytest.raises(ValueError, match="no accepted structures to teach from"):
        logic.teachModel("my-organs", "demo-phantom-seg", examplesFolder=examples)
    # two structures accepted on the phantom, kept as the interactive session keeps them
    bundle = load_bundle("demo-phantom-seg")
    image, values = sitk.ReadImage(str(ct_file)), sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file)))
    digest = encoder_digest(bundle.network)
    scan_id = cache_key(scan_digest(image), digest, bundle.manifest.preprocessing.to_dict(), bundle.manifest.inference)[:16]
    for value, name in ((1, "liver"), (2, "spleen")):
        write_accepted(examples, scan_id, str(ct_file), name, value, values == value, image, "demo-phantom-seg", digest)
    with pytest.raises(ValueError, match="lower-case letters"):
        logic.teachModel("My Organs", "demo-phantom-seg", examplesFolder=examples)
    progress = []
    logic.progressCallback = lambda fraction, message: progress.append(fraction)
    job = logic.teachModel("my-organs", "demo-phantom-seg", device="CPU", examplesFolder=examples, steps=3)
    assert not job.finished and logic.busy  # returned at once; the engine works in the background
    done = logic.wait(TIMEOUT_S)
    assert done.state == JobState.SUCCEEDED, done.full_log()
    assert done.value == "my-organs" and progress and max(progress) > 0.5
    taught = next(m for m in logic.availableModels() if m.name == "my-organs")
    assert taught.segments and set(taught.structures) == {"liver", "spleen"}
    with pytest.raises(ValueError, match="already in the catalog"):
        logic.teachModel("my-organs", "demo-phantom-seg", examplesFolder=examples)

    # the panel's Teach model row (interactive_section, the .ui's widgets emulated): build on the model
    # taught last, with a time budget, through the real logic and engine
    import ui_loader
    from CoralBaySlicerScene.interactive_section import InteractiveSection

    ui, params = ui_loader.childWidgetVariables(REPO / "Resources" / "UI" / "CoralBaySlicer.ui"), logic.getParameterNode()
    section = InteractiveSection(ui, logic, lambda: params, lambda: True, lambda: None)
    section.updateButtons(canStart=True)
    assert not ui.teachBuildOnCheckBox.enabled and section.teachOptions() == {"startFrom": None, "minutes": None}
    section.taught(done.value)  # what the widget does when its teach job succeeds
    assert params.proposeWith == params.taughtModel == "my-organs"
    assert ui.teachBuildOnCheckBox.enabled and "my-organs" in ui.teachBuildOnCheckBox.text
    assert section.teachOptions()["startFrom"] is None  # not ticked: a teach from the selected model
    with pytest.raises(ValueError, match="within range"):
        params.teachMinutes = -1.0  # the minutes box's range, as Slicer's validator checks it
    params.teachBuildOn, params.teachMinutes = True, 0.5  # what the ticked box and the minutes box set (GUI binding)
    assert section.teachOptions() == {"startFrom": "my-organs", "minutes": 0.5}
    again = logic.teachModel("my-organs-2", "demo-phantom-seg", device="CPU", examplesFolder=examples, steps=2,
                             **section.teachOptions())
    argv = again.run.argv
    assert argv[argv.index("--from") + 1] == "my-organs" and argv[argv.index("--minutes") + 1] == "0.5"
    finished = logic.wait(TIMEOUT_S)
    assert finished.state == JobState.SUCCEEDED and "starting from my-organs" in finished.full_log(), finished.full_log()


def _accept_by_clicks(logic, ct, image, truth, positive, negative, name: str, target: float = 0.9) -> float:
    """Start `name`, click as the simulated user until Dice `target` (at most 10 clicks), accept."""
    started = _answer(logic, logic.startStructure(name))
    assert "proposed_by" not in started and logic.interactive.previewId is None  # nothing accepted yet: no proposal
    prediction, dice = None, 0.0
    for _ in range(10):
        _click(positive, negative, S.next_click(prediction, truth, image))
        sent = logic.addInteractivePoints(positive, True) + logic.addInteractivePoints(negative, False)
        _answer(logic, sent[0])
        prediction = _preview(logic, ct)
        dice = S.dice(prediction, truth)
        if dice >= target:
            break
    _answer(logic, logic.interactiveAccept())
    positive.RemoveAllControlPoints()
    negative.RemoveAllControlPoints()
    return dice


def test_the_next_scan_starts_from_the_proposal_and_a_restart_replays_it(module, tmp_path):
    """Issue #14's loop in Slicer: the liver accepted on one scan; on the next scan (other organ
    sizes, stored in another orientation) starting the liver shows the engine's proposal as the
    preview segment before any click; a click corrects it, undo goes back to it, and after the
    engine is killed the replayed `start` proposes again (Accept with no click accepts it)."""
    import slicer

    scans = {}
    for key, seed, direction in (("first", 10007, "LPS"), ("second", 10008, "RAI")):
        ct_file, labels_file = write_interactive_phantom(tmp_path / key, seed, direction)
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file))) == 1
        scans[key] = (ct_file, sitk.ReadImage(str(ct_file)), liver)
    examples = tmp_path / "examples"
    logic = module.CoralBaySlicerLogic()
    positive = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    negative = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")

    ct_file, image, liver = scans["first"]
    ct = slicer.util.loadVolume(str(ct_file), {"name": "CT first"})
    _answer(logic, logic.startInteractive(ct, "demo-phantom-seg", device="CPU", examplesFolder=examples))
    accepted_dice = _accept_by_clicks(logic, ct, image, liver, positive, negative, "liver")
    first_scan = logic.interactive.scan
    logic.closeInteractive()
    # the example must stay usable after End session: the scan it was accepted on is kept beside it
    assert first_scan.is_file() and first_scan.parent == examples / "scans"

    ct_file, image, liver = scans["second"]
    ct = slicer.util.loadVolume(str(ct_file), {"name": "CT second"})
    messages = []
    logic.logCallback = lambda level, message: messages.append(message)
    opened = _answer(logic, logic.startInteractive(ct, "demo-phantom-seg", device="CPU", examplesFolder=examples))
    assert opened["accepted"] == {}  # nothing accepted on this scan: the liver is an example of another
    output = logic.interactive.segmentation
    started = _answer(logic, logic.startStructure("liver"))
    assert started["proposed_by"] == "examples"
    proposal = _preview(logic, ct)
    assert np.array_equal(proposal, sitk.GetArrayFromImage(sitk.ReadImage(started["mask"])) > 0)
    assert _segment_names(output) == ["liver (preview)"]
    proposal_dice = S.dice(proposal, liver)
    assert any(m.startswith("liver: proposed from your accepted examples") for m in messages), messages
    # the replay log starts the structure as it was started: with the proposal
    log = logic.interactive.session.log
    assert log.propose and log.proposed_by == "examples"
    assert log.requests()[1] == {"type": "start", "name": "liver", "value": started["value"], "propose": True}

    # a click corrects the proposal; undo goes back to the proposal, not to an empty preview
    _click(positive, negative, S.next_click(proposal, liver, image))
    sent = logic.addInteractivePoints(positive, True) + logic.addInteractivePoints(negative, False)
    _answer(logic, sent[0])
    corrected = _preview(logic, ct)
    assert not np.array_equal(corrected, proposal)
    undone = _answer(logic, logic.interactiveUndo())
    back = _preview(logic, ct)
    assert undone["request"] == "undo" and undone["proposed_by"] == "examples"
    assert log.prompts == [] and log.requests()[-1]["type"] == "start"
    print(f"Dice: accepted on scan 1 {accepted_dice:.3f}; proposal on scan 2 {proposal_dice:.3f}, after one click "
          f"{S.dice(corrected, liver):.3f}; undo back to the proposal: Dice to it {S.dice(back, proposal):.4f} "
          f"(identical: {np.array_equal(back, proposal)})")
    assert proposal_dice > 0.6, proposal_dice
    assert S.dice(back, proposal) > 0.99

    # the engine dies: the replayed start proposes again, so Accept with no click accepts the proposal
    os.kill(logic.interactive.session.pid, signal.SIGKILL)
    accepted = _answer(logic, logic.interactiveAccept())
    assert logic.interactive.session.restarts == 1
    assert _segment_names(output) == ["liver"]
    kept = slicer.util.arrayFromSegmentBinaryLabelmap(output, _segment_ids(output.GetSegmentation())[0], ct) > 0
    print(f"after the restart: accepted {accepted['voxels']} voxels, proposal {int(back.sum())}, "
          f"Dice {S.dice(kept, back):.4f}")
    assert np.array_equal(kept, back)
    logic.closeInteractive()


def test_a_session_proposes_with_a_chosen_model(module, tmp_path):
    """Propose with a segmentation model (what Teach model makes; the demo bundle stands in, on the
    phantom field of view it was trained on): the engine starts with --propose-with, `start` answers
    with the model's segmentation as the preview, undo of the first click goes back to it."""
    import slicer

    ct_file, labels_file = write_interactive_phantom(tmp_path, size_mm=(240, 200, 140))
    image, liver = sitk.ReadImage(str(ct_file)), sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file))) == 1
    ct = slicer.util.loadVolume(str(ct_file), {"name": "CT"})
    logic = module.CoralBaySlicerLogic()
    messages = []
    logic.logCallback = lambda level, message: messages.append(message)
    _answer(logic, logic.startInteractive(ct, "demo-phantom-seg", device="CPU", examplesFolder=tmp_path / "examples",
                                          proposeWith="demo-phantom-seg"))
    argv = logic.interactive.session.argv
    assert argv[argv.index("--propose-with") + 1] == "demo-phantom-seg"
    started = _answer(logic, logic.startStructure("liver"))
    assert started["proposed_by"] == "demo-phantom-seg"
    proposal = _preview(logic, ct)
    assert S.dice(proposal, liver) > 0.5
    assert any(m.startswith("liver: proposed by model demo-phantom-seg") for m in messages), messages
    scan = logic.interactive.scan
    positive = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include")
    negative = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")
    _click(positive, negative, S.next_click(proposal, liver, image))
    _answer(logic, (logic.addInteractivePoints(positive, True) + logic.addInteractivePoints(negative, False))[0])
    assert not np.array_equal(_preview(logic, ct), proposal)
    _answer(logic, logic.interactiveUndo())
    assert np.array_equal(_preview(logic, ct), proposal)
    # the model's proposal is itself undoable (a segment prompt to the engine); the replay log knows it
    assert _answer(logic, logic.interactiveUndo())["voxels"] == 0 and not _preview(logic, ct).any()
    log = logic.interactive.session.log
    assert log.proposal_undone and [r["type"] for r in log.requests()] == ["open", "start", "undo"]
    # unchecked "Start from a proposal": the structure starts empty although the model knows it
    plain = _answer(logic, logic.startStructure("spleen", propose=False))
    assert "proposed_by" not in plain and "mask" not in plain and logic.interactive.previewId is None
    assert logic.interactive.session.log.propose is False
    logic.closeInteractive()
    assert not scan.exists()  # nothing accepted on it: not kept

"""The Interactive section's Qt wiring (CoralBaySlicerScene/interactive_section.py) driving the real
Logic on REAL Slicer code (slicer-core scene, markups, interaction node, segmentations) and a real
`coralbay interact` engine: each keyboard shortcut, place mode that stays on between points, the box
drawn as a markups ROI, refinement of an existing segment, next structure, the one Cancel, the
clean-up of kept scans and the status line. Only Qt is emulated: the widgets named in the panel's
.ui (slicer_emulation/ui_loader.py, qt_widgets.py, segment_selector.py) and the main window that
owns the shortcuts.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from conftest import REPO, write_interactive_phantom
from CoralBaySlicerLib import coordinates
from test_slicer_module import _segment_names, module  # noqa: F401 (fixture)

TIMEOUT_S = 240
UI_FILE = REPO / "Resources" / "UI" / "CoralBaySlicer.ui"


def _settle(logic, timeout: float = TIMEOUT_S) -> list:
    """Poll until the engine has answered everything sent (what the interactive timer does)."""
    events, deadline = [], time.monotonic() + timeout
    while True:
        events += logic.pollInteractive()
        if logic.interactive is None or not logic.interactive.session.busy:
            return events
        assert time.monotonic() < deadline, "the engine did not answer in time"
        time.sleep(0.05)


def _preview(logic) -> np.ndarray:
    import slicer

    state = logic.interactive
    return slicer.util.arrayFromSegmentBinaryLabelmap(state.segmentation, state.previewId, state.volume) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _prompt_types(logic) -> list:
    return [p["type"] for p in logic.interactive.session.log.prompts]


def test_shortcuts_box_refine_and_next_structure_drive_the_logic(module, tmp_path):
    import qt_widgets
    import slicer
    import ui_loader
    from CoralBaySlicerScene.interactive_section import SHORTCUTS, InteractiveSection

    ct_file, labels_file = write_interactive_phantom(tmp_path / "scan")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file)))
    liver = labels == 1
    ct = slicer.util.loadVolume(str(ct_file), {"name": "CT"})
    ui = ui_loader.childWidgetVariables(UI_FILE)
    logic = module.CoralBaySlicerLogic()
    params = logic.getParameterNode()
    params.inputVolume, params.model, params.device = ct, "demo-phantom-seg", "CPU"
    entry = next(m for m in logic.availableModels() if m.name == "demo-phantom-seg")
    ui.structureComboBox.addItems(entry.structures)  # what the model section fills in from the label table
    changed = []

    def refresh() -> None:  # what the widget's updateButtons does for the section
        changed.append(True)
        section.updateButtons(canStart=True)
    section = InteractiveSection(ui, logic, lambda: params, lambda: True, refresh)
    window = qt_widgets.Window()
    section.installShortcuts(window)
    assert sorted(s.key for s in window.shortcuts) == sorted(key for key, _what, _method in SHORTCUTS)
    assert all(key in ui.shortcutsLabel.text for key, _what, _method in SHORTCUTS)  # shown in the panel

    # before a session: a shortcut is refused in one sentence, nothing starts
    assert window.press("N") == 1 and logic.interactive is None
    section.updateButtons(canStart=True)
    assert ui.startInteractiveButton.enabled and not ui.sendBoxButton.enabled and not ui.acceptInteractiveButton.enabled

    ui.startInteractiveButton.click()
    assert logic.interactive is not None and params.interactivePositive is not None
    _settle(logic)
    assert ui.interactiveStatusLabel.text.startswith("Ready")

    # N: the model's first structure (name, colour and code from its label table, not the phantom's)
    window.press("N")
    _settle(logic)
    state = logic.interactive
    label = entry.labels.by_name("liver")
    assert state.structure == "liver" and ui.structureComboBox.currentText == "liver"
    assert state.color == tuple(c / 255.0 for c in label.color)
    assert state.terminology == label.terminology.slicer_string()

    # I: place mode on the include list, staying on between points; each point goes at once
    window.press("I")
    interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence() == 1
    assert slicer.modules.markups.logic().GetActiveListID() == params.interactivePositive.GetID()
    k, j, i = (int(v) for v in np.argwhere(liver).mean(axis=0))
    matrix = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    params.interactivePositive.AddControlPoint(list((ijk_to_ras @ [i, j, k, 1])[:3]))
    _settle(logic)
    assert _prompt_types(logic) == ["point"] and "ml (answer" in ui.interactiveStatusLabel.text
    clicked = _preview(logic)
    assert interaction.GetPlaceModePersistence() == 1  # still placing: the next click needs no button

    # E: the exclude list becomes the active one, place mode still persistent
    window.press("E")
    assert slicer.modules.markups.logic().GetActiveListID() == params.interactiveNegative.GetID()
    assert interaction.GetPlaceModePersistence() == 1

    # a box drawn around the liver (markups ROI): refused outside the volume, then sent
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(5000.0, 0.0, 0.0)
    roi.SetSize(10.0, 10.0, 10.0)
    params.interactiveBox = roi
    assert ui.sendBoxButton.enabled
    ui.sendBoxButton.click()
    assert _prompt_types(logic) == ["point"] and not logic.interactive.session.busy  # refused, nothing sent
    zyx = np.argwhere(liver)
    corners = [(ijk_to_ras @ [x, y, z, 1])[:3] for z, y, x in (zyx.min(0) - 1, zyx.max(0) + 1)]
    roi.SetCenter(*((corners[0] + corners[1]) / 2))
    roi.SetSize(*np.abs(corners[1] - corners[0]))
    ui.sendBoxButton.click()
    _settle(logic)
    box = logic.interactive.session.log.prompts[-1]
    expected = coordinates.ras_bounds_to_lps_box([min(corners[0][0], corners[1][0]), max(corners[0][0], corners[1][0]),
                                                  min(corners[0][1], corners[1][1]), max(corners[0][1], corners[1][1]),
                                                  min(corners[0][2], corners[1][2]), max(corners[0][2], corners[1][2])])
    assert box["type"] == "box" and np.allclose(box["lower"] + box["upper"], expected, atol=1e-3)
    boxed = _preview(logic)

    # Ctrl+Z / Ctrl+Y: undo the box (back to the click's answer), redo it
    window.press("Ctrl+Z")
    _settle(logic)
    assert _prompt_types(logic) == ["point"] and np.array_equal(_preview(logic), clicked)
    window.press("Ctrl+Y")
    _settle(logic)
    assert _prompt_types(logic) == ["point", "box"] and np.array_equal(_preview(logic), boxed)

    # refine: an existing segment chosen in the panel (here the true liver in another segmentation)
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "earlier work")
    other.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segment_id = other.GetSegmentation().AddEmptySegment("", "liver from earlier")
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver.astype(np.uint8), other, segment_id, ct)
    ui.refineSegmentSelector.setCurrentNode(other)
    ui.refineSegmentSelector.setCurrentSegmentID(segment_id)
    ui.refineSegmentButton.click()
    events = _settle(logic)
    sent = logic.interactive.session.log.prompts[-1]
    assert sent["type"] == "segment"  # exactly the chosen segment, on the scan's grid:
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(sent["path"])) == sent["value"], liver)
    answer = next(e for e in reversed(events) if e.is_answer)
    assert np.array_equal(_preview(logic), sitk.GetArrayFromImage(sitk.ReadImage(answer.mask)) > 0)  # shown
    print(f"Dice to the truth: click {_dice(clicked, liver):.3f}, box {_dice(boxed, liver):.3f}, "
          f"segment {_dice(_preview(logic), liver):.3f}")

    # A: accept; the points go, the structure list is ready for the next one
    window.press("A")
    _settle(logic)
    assert "liver" in _segment_names(logic.interactive.segmentation)
    assert ui.interactiveStatusLabel.text == "Accepted liver." and params.interactivePositive.GetNumberOfControlPoints() == 0

    # N again: the next structure the segmentation lacks
    window.press("N")
    _settle(logic)
    assert logic.interactive.structure == entry.structures[1] == ui.structureComboBox.currentText

    # the one Cancel stops the interactive requests still waiting; the status line says so. Five
    # points go at once, inside the next structure (a point on the accepted liver is refused at
    # once, which leaves nothing waiting). Five graph cuts are ~65 ms of work, so the engine is
    # stopped while they are sent and the Cancel goes: it then reads them all before answering.
    from coralbay.phantom import PHANTOM_LABELS
    engine_pid = logic.interactive.session.pid
    os.kill(engine_pid, signal.SIGSTOP)
    try:
        inside = np.argwhere(labels == PHANTOM_LABELS.by_name(entry.structures[1]).value)
        for z, y, x in inside[np.linspace(0, len(inside) - 1, 5).astype(int)]:
            params.interactivePositive.AddControlPoint(list((ijk_to_ras @ [x, y, z, 1])[:3]))
        assert logic.interactive.session.busy
        assert ui.interactiveStatusLabel.text == f"Working on the point of {entry.structures[1]}..."
        logic.cancel()
    finally:
        os.kill(engine_pid, signal.SIGCONT)
    events = _settle(logic)
    cancelled = [e for e in events if e.kind == "error" and e.message == "Cancelled."]
    assert cancelled and not logic.interactive.session.busy
    # "Cancelled.", or the restart sentence when the engine did not stop within the grace time
    assert ui.interactiveStatusLabel.text.startswith("Cancel"), ui.interactiveStatusLabel.text

    # clean-up of kept scans: the open session's scan stays, an orphan goes
    orphan = logic.interactive.examples / "scans" / "orphan.nrrd"
    orphan.write_bytes(b"left by a session that never ended")
    ui.cleanUpScansButton.click()
    assert not orphan.exists() and logic.interactive.scan.is_file()

    section.onClose()
    section.removeShortcuts()
    assert window.shortcuts == [] and window.press("N") == 0
    assert ui.interactiveStatusLabel.text == "No session." and changed

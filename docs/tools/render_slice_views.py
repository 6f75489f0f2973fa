"""Render docs/images/CoralBaySlicer-scan.png (the panel beside three slice views of a real CT with
an interactive result) and docs/images/interactive-edit.png (the axial view after each click of that
edit), the views drawn by Slicer's own slice code (slicer-core), not by hand.

What is real: slicer-core's MRML scene, volume and segmentation nodes, the module's Logic running a
real `coralbay interact` engine (demo bundle) on the TotalSegmentator example CT
(`../shared/data/totalseg/example_ct_sm.nii.gz`, or under $CORALBAY_SHARED_DATA), clicks placed as control points of markups point
lists, the liver accepted into a segmentation node; each view is `vtkMRMLSliceLogic`'s resliced and
blended image of the CT (abdomen window) with `vtkMRMLSegmentationsDisplayableManager2D` drawing the
segments (fill and outline) on an offscreen VTK render window, as a slice view of Slicer does.
The clicks come from the simulated user of `coralbay eval-interactive`, aimed at TotalSegmentator's
own liver label (another model's output: the Dice printed is agreement with it, not accuracy).
What is not Slicer's: the Qt application (Testing/Python/slicer_emulation stands in for it), the
view frames and titles (drawn here), and the panel (rendered from the .ui by render_panel.py).

    QT_QPA_PLATFORM=offscreen /tmp/qt/bin/python docs/tools/render_panel.py --scan /tmp/panel-scan.png
    PYTHONPATH=CoralBaySlicer:Testing/Python OMP_NUM_THREADS=2 python docs/tools/render_slice_views.py /tmp/panel-scan.png
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "Testing" / "Python" / "slicer_emulation"), str(REPO / "CoralBaySlicer")]
SCAN = Path(os.environ.get("CORALBAY_SHARED_DATA", REPO.parent / "shared" / "data")) / "totalseg"
LIVER_VALUE = 5  # TotalSegmentator's liver in labels.json
CLICKS = 3   # after the box
BAR, GAP = 20, 6  # a view's title bar and the space between views (pixels)
FRAME = 400  # pixels of each frame of the edit
WINDOW_HU = (-175.0, 250.0)  # eva's abdomen window


def interactive_liver(logic, ct, folder: Path, frame) -> tuple:
    """A session of the module's Logic as the evaluation runs it: a box (a markups ROI, the official
    CVPR 2025 box of the liver label), then clicks as markups control points, then Accept.
    `frame(title, ras, dice, ml)` runs after each answer (the preview segment is in the scene).
    Returns the output segmentation, the last click (RAS) and the Dice with TotalSegmentator's liver."""
    import slicer

    from coralbay.interactive import simulate as S
    from CoralBaySlicerLib import coordinates

    image = sitk.ReadImage(str(SCAN / "example_ct_sm.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SCAN / "example_seg.nii.gz"))) == LIVER_VALUE
    points = {True: slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "include"),
              False: slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "exclude")}
    points[True].GetDisplayNode().SetSelectedColor(0.2, 0.9, 0.2)  # include green, exclude red (Slicer's default)
    logic.waitInteractive(logic.startInteractive(ct, "demo-phantom-seg", device="CPU",
                                                 examplesFolder=folder / "examples"), 600)
    logic.waitInteractive(logic.startStructure("liver", propose=False), 600)
    box = S.official_box(truth)
    corners = [coordinates.lps_to_ras(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[::-1]]))
               for c in (np.asarray(box.lower_zyx) - 0.5, np.asarray(box.upper_zyx) + 0.5)]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(list((np.asarray(corners[0]) + corners[1]) / 2))
    roi.SetSize(list(np.abs(np.asarray(corners[1]) - corners[0])))
    answer = logic.waitInteractive(logic.addInteractiveBox(roi), 600)
    state = logic.interactive
    prediction = slicer.util.arrayFromSegmentBinaryLabelmap(state.segmentation, state.previewId, ct) > 0
    last = coordinates.lps_to_ras(image.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in ((np.asarray(box.lower_zyx) + box.upper_zyx) / 2)[::-1]]))
    roi.GetDisplayNode().SetVisibility(False)
    frame("box", last, S.dice(prediction, truth), answer.get("volume_ml"))
    for _ in range(CLICKS):
        click = S.next_click(prediction, truth, image)
        if click is None:
            break
        last = coordinates.lps_to_ras(click.lps)
        points[click.positive].AddControlPoint(list(last))
        answer = {}
        for requestId in logic.addInteractivePoints(points[click.positive], click.positive):
            answer = logic.waitInteractive(requestId, 600)
        state = logic.interactive
        prediction = slicer.util.arrayFromSegmentBinaryLabelmap(state.segmentation, state.previewId, ct) > 0
        frame("include" if click.positive else "exclude", last, S.dice(prediction, truth), answer.get("volume_ml"))
    dice = S.dice(prediction, truth)
    output = logic.interactive.segmentation
    logic.waitInteractive(logic.interactiveAccept(), 600)
    logic.closeInteractive()
    return output, last, dice


def render_view(layoutName: str, size: int, throughRAS) -> Image.Image:
    """One slice view through a point, drawn by slicer-core (see slicer_emulation/slice_views.render)."""
    import slice_views

    return Image.fromarray(slice_views.render(layoutName, size, throughRAS))


def compose(panel: Image.Image, views: dict, out: Path) -> None:
    """The module panel on the left, the slice views stacked on the right, as tall as the panel."""
    colours = {"Red": (243, 74, 51), "Yellow": (237, 213, 76), "Green": (110, 176, 75)}
    size = next(iter(views.values()))[1].width
    figure = Image.new("RGB", (panel.width + GAP + size, panel.height), (40, 40, 40))
    figure.paste(panel.convert("RGB"), (0, 0))
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default(size=BAR - 4)
    for index, (layoutName, (orientation, view)) in enumerate(views.items()):
        top, left = index * (size + BAR + GAP), panel.width + GAP
        draw.rectangle([left, top, left + size - 1, top + BAR - 1], fill=colours[layoutName])
        draw.text((left + 4, top + 1), f"{layoutName}: {orientation}", fill=(0, 0, 0), font=font)
        figure.paste(view, (left, top + BAR))
    figure.save(out, optimize=True)


def compose_frames(frames: list, out: Path) -> None:
    """The Red view after each click side by side, each titled with the click and its answer."""
    size = frames[0][0].width
    figure = Image.new("RGB", (len(frames) * (size + GAP) - GAP, size + BAR), (40, 40, 40))
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default(size=BAR - 6)
    for index, (view, title) in enumerate(frames):
        left = index * (size + GAP)
        draw.rectangle([left, 0, left + size - 1, BAR - 1], fill=(243, 74, 51))
        draw.text((left + 4, 2), title, fill=(0, 0, 0), font=font)
        figure.paste(view, (left, BAR))
    figure.save(out, optimize=True)


def main(argv: list) -> int:
    if len(argv) != 1:
        print("usage: render_slice_views.py PANEL.png (from render_panel.py --scan)", file=sys.stderr)
        return 2
    import application

    application.start()
    import slicer

    import CoralBaySlicer

    CoralBaySlicer.CoralBaySlicerLogic.engineExecutable = sys.executable
    logic = CoralBaySlicer.CoralBaySlicerLogic()
    ct = slicer.util.loadVolume(str(SCAN / "example_ct_sm.nii.gz"), {"name": "example_ct_sm"})
    display = ct.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*WINDOW_HU)
    slicer.util.setSliceViewerLayers(background=ct, foreground=None, label=None)
    frames = []

    def frame(kind: str, ras, dice: float, ml) -> None:
        title = (f"box: Dice {dice:.3f}, {float(ml):.0f} ml" if kind == "box" else
                 f"click {len(frames)} ({kind}): Dice {dice:.3f}, {float(ml):.0f} ml")
        frames.append((render_view("Red", FRAME, ras), title))
        print(title)
    with tempfile.TemporaryDirectory(prefix="coralbay-views-") as folder:
        output, lastClick, dice = interactive_liver(logic, ct, Path(folder), frame)
    print(f"liver after the box and {CLICKS} clicks: Dice {dice:.3f} with TotalSegmentator's liver label")
    compose_frames(frames, REPO / "docs" / "images" / "interactive-edit.png")
    output.GetDisplayNode().SetVisibility(True)
    panel = Image.open(argv[0])
    size = (panel.height - 2 * GAP) // 3 - BAR
    views = {name: (orientation, render_view(name, size, lastClick))
             for name, orientation in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal"))}
    out = REPO / "docs" / "images" / "CoralBaySlicer-scan.png"
    compose(panel, views, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

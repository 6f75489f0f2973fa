"""Render docs/images/interactive-edit.png: four frames of an interactive edit of the liver, as the
Interactive section shows it (the preview segment after each answer).

Real engine, real answers: a `coralbay interact` session (CoralBaySlicerLib.interactive_session, the
module's own client) with the demo bundle on the small phantom the Slicer tests click on (seed 10007),
the structure started with its proposal off, then the clicks of the simulated user of
`coralbay eval-interactive` (each at the centre of the largest error). Each frame is the axial slice
through that click with the engine's mask outlined; drawn with matplotlib (Slicer cannot run here),
so the views are not Slicer's own rendering.

    PYTHONPATH=CoralBaySlicer:Testing/Python OMP_NUM_THREADS=2 python docs/tools/render_interactive_edit.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from conftest import write_interactive_phantom  # noqa: E402
from coralbay.interactive import simulate as S  # noqa: E402
from CoralBaySlicerLib.interactive_session import InteractiveSession, interact_argv  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLICKS = 3


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="coralbay-edit-"))
    ct_file, labels_file = write_interactive_phantom(folder)
    image = sitk.ReadImage(str(ct_file))
    ct = sitk.GetArrayFromImage(image)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file))) == 1
    argv = interact_argv(sys.executable, "demo-phantom-seg", folder / "out", folder / "examples", device="CPU")
    session = InteractiveSession(argv, env={**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer")}, cwd=folder)
    session.start()
    frames = []
    try:
        assert session.ask("open", image=str(ct_file), timeout=600)["event"] == "result"
        assert session.ask("start", name="liver", propose=False)["event"] == "result"
        prediction = None
        for _ in range(CLICKS):
            click = S.next_click(prediction, liver, image)
            answer = session.ask("point", lps=list(click.lps), positive=click.positive, timeout=600)
            prediction = sitk.GetArrayFromImage(sitk.ReadImage(answer["mask"])) > 0
            frames.append((click, prediction, answer))
    finally:
        session.close()
    figure, axes = plt.subplots(1, CLICKS, figsize=(4 * CLICKS, 4.2))
    for number, (ax, (click, mask, answer)) in enumerate(zip(axes, frames), start=1):
        z, y, x = click.voxel_zyx
        ax.imshow(ct[z], cmap="gray", vmin=-175, vmax=250)
        ax.contour(liver[z], levels=[0.5], colors="white", linewidths=0.8, linestyles="dotted")
        ax.contour(mask[z], levels=[0.5], colors="gold", linewidths=1.5)
        ax.plot(x, y, "o", color="lime" if click.positive else "red", markersize=7, markeredgecolor="black")
        ax.set_title(f"click {number} ({'include' if click.positive else 'exclude'}): "
                     f"Dice {S.dice(mask, liver):.3f}, {answer['volume_ml']} ml", fontsize=9)
        ax.axis("off")
    figure.suptitle("liver (preview) after each click: engine answer (gold), truth (white dots), "
                    "demo-phantom-seg, phantom 10007", fontsize=9)
    figure.tight_layout()
    out = REPO / "docs" / "images" / "interactive-edit.png"
    figure.savefig(out, dpi=90)
    for number, (click, mask, _answer) in enumerate(frames, start=1):
        print(f"click {number}: {'include' if click.positive else 'exclude'} at voxel {click.voxel_zyx}, "
              f"Dice {S.dice(mask, liver):.3f}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

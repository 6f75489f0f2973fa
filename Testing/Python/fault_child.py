"""Child process for the fault tests: writes outputs through the engine's writers while the parent
kills it, limits its file size, or removes its output folder.

    fault_child.py loop FOLDER FIRST    write version FIRST, FIRST+1... of three outputs until killed
    fault_child.py fsize FOLDER LIMIT   with RLIMIT_FSIZE=LIMIT, try to overwrite one output per format

Version k of the image is `version_array(k)`, of the report '{"version": k}', of the folder two
files holding k: the parent can tell a complete version from a torn one. Lines on stdout:
"start K", "done K", or for a refused write "refused <one sentence>"; in fsize mode one JSON
object per output.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

import numpy as np

SHAPE = (64, 128, 128)  # z, y, x: 2 MiB of int16 noise, so a write takes a noticeable moment
FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


def version_array(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(-1000, 1000, SHAPE, dtype=np.int16)


def version_image(k: int):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(version_array(k))
    image.SetSpacing((0.8, 0.8, 2.0))
    return image


def loop(folder: Path, first: int) -> None:
    from coralbay.atomic import atomic_dir, write_text_atomic
    from coralbay.errors import CoralBayError
    from coralbay.io.volumes import write_image

    k = first - 1
    while True:
        k += 1
        print(f"start {k}", flush=True)
        try:
            write_image(version_image(k), folder / "labels.nii.gz")
            write_text_atomic(folder / "report.json", json.dumps({"version": k, "pad": "x" * 100_000}))
            with atomic_dir(folder / "bundle") as tmp:
                (tmp / "a.txt").write_text(str(k))
                (tmp / "b.txt").write_text(str(k))
        except CoralBayError as exc:
            print(f"refused {exc}", flush=True)
            sys.exit(3)
        print(f"done {k}", flush=True)


def file_size_limit(folder: Path, limit: int) -> None:
    """Every write must be refused with one sentence; the parent checks the earlier files."""
    from coralbay.atomic import write_text_atomic
    from coralbay.errors import CoralBayError
    from coralbay.io.volumes import write_image

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from coralbay.io.labels import LabelTable
    from coralbay.io.label_maps import write_label_map

    targets = [(folder / f"out{suffix}", lambda p: write_image(version_image(2), p)) for suffix in FORMATS]
    targets.append((folder / "report.json", lambda p: write_text_atomic(p, "y" * (4 * limit))))
    targets.append((folder / "segmentation.nii.gz",  # the engine's label map + table writer
                    lambda p: write_label_map(version_image(2), LabelTable.generic([1]), p)))
    for path, write in targets:
        try:
            write(path)
            print(json.dumps({"name": path.name, "written": True}), flush=True)
        except CoralBayError as exc:
            print(json.dumps({"name": path.name, "written": False, "message": str(exc)}), flush=True)


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "loop":
        loop(folder, int(sys.argv[3]))
    elif mode == "fsize":
        file_size_limit(folder, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")

"""Command lines of the engine as the Slicer module runs them (`python -m coralbay <these args>`).

One place that knows the engine's option names, so the module file never assembles strings and the
tests can check each command line against the real engine. Coordinates given here are already LPS
(see `coordinates.py`); values that the engine would reject are refused here with one sentence, before
any process starts.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Iterable, Sequence, Union

from CoralBaySlicerLib.coordinates import Box, Point, format_coordinates

# GUI choice -> the engine's --device value. "GPU" is CUDA, or Apple's MPS on macOS.
DEVICE_CHOICES = ("auto", "GPU", "CPU")

# Export format -> file name ending of the output. STL and OBJ write one mesh per structure into a
# folder (named after the segmentation).
EXPORT_FORMATS = {
    "seg.nrrd": ".seg.nrrd",
    "nifti": ".nii.gz",
    "nrrd": ".nrrd",
    "dicom-seg": ".dcm",
    "stl": "",
    "obj": "",
}

PathLike = Union[str, os.PathLike]  # (Slicer 5.6 runs Python 3.9: no `X | Y` at run time)


def engine_device(choice: str, platform: str = sys.platform) -> str:
    """The engine's --device value for a GUI device choice."""
    if choice == "auto":
        return "auto"
    if choice == "CPU":
        return "cpu"
    if choice == "GPU":
        return "mps" if platform == "darwin" else "cuda"
    raise ValueError(f"Unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}.")


MAX_OVERLAP = 0.95  # the engine's limit


def segment_args(input_path: PathLike, model: str, output: PathLike, *, device: str = "auto",
                 overlap: float | None = None, roi_lps: Box | None = None,
                 structures: Sequence[str] | None = None, backbone: str | None = None) -> list[str]:
    """`segment INPUT --model M --output LABELS ...` with JSON-lines progress."""
    args = ["segment", str(input_path), *model_args(model, device, backbone), "--output", str(output)]
    if overlap is not None:
        if not 0.0 <= float(overlap) <= MAX_OVERLAP:
            raise ValueError(f"The window overlap must be from 0 to {MAX_OVERLAP}, not {overlap}.")
        args += ["--overlap", f"{float(overlap):g}"]
    if roi_lps is not None:
        args.append("--roi=" + format_coordinates(roi_lps))  # "=": the first value may be negative
    if structures is not None:
        names = [n.strip() for n in structures if n.strip()]
        if not names:
            raise ValueError("Select at least one structure to segment.")
        bad = [n for n in names if "," in n]
        if bad:
            raise ValueError(f"Structure names cannot contain commas: {', '.join(bad)}.")
        args += ["--structures", ",".join(names)]
    return args + ["--progress", "jsonl"]


def classify_args(input_path: PathLike, model: str, output: PathLike, *, device: str = "auto",
                  point_lps: Point | None = None, backbone: str | None = None,
                  allow_long_run: bool = False) -> list[str]:
    """`classify INPUT --model M --output REPORT.json [--point X,Y,Z]` with JSON-lines progress; a run
    estimated over a minute is refused (needs_confirmation) unless `allow_long_run` (the user confirmed)."""
    args = ["classify", str(input_path), *model_args(model, device, backbone), "--output", str(output)]
    if point_lps is not None:
        args.append("--point=" + format_coordinates(point_lps))  # "=": the first value may be negative
    if allow_long_run:
        args.append("--allow-long-run")
    return args + ["--progress", "jsonl"]


def compare_args(prediction: PathLike, reference: PathLike, output_dir: PathLike, *,
                 image: PathLike | None = None) -> list[str]:
    """`compare PRED REF --output DIR [--image CT]` with JSON-lines progress."""
    args = ["compare", str(prediction), str(reference), "--output", str(output_dir)]
    if image is not None:
        args += ["--image", str(image)]
    return args + ["--progress", "jsonl"]


def export_args(labels: PathLike, fmt: str, output: PathLike, *,
                dicom_series: PathLike | None = None) -> list[str]:
    """`export LABELS --format F --output PATH [--dicom-series DIR]` with JSON-lines progress."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if fmt == "dicom-seg" and dicom_series is None:
        raise ValueError("DICOM SEG export needs the input volume's DICOM series: load the CT from "
                         "Slicer's DICOM database, or choose another format.")
    args = ["export", str(labels), "--format", fmt, "--output", str(output)]
    if dicom_series is not None:
        args += ["--dicom-series", str(dicom_series)]
    return args + ["--progress", "jsonl"]


def phantom_args(seed: int, ct: PathLike, labels: PathLike, *, spacing_mm: float | None = None,
                 direction: str | None = None) -> list[str]:
    """`phantom --seed N --output CT --labels LABELS [--spacing S] [--direction CODE]`."""
    args = ["phantom", "--seed", str(int(seed)), "--output", str(ct), "--labels", str(labels)]
    if spacing_mm is not None:
        args += ["--spacing", f"{float(spacing_mm):g}"]
    if direction is not None:
        args += ["--direction", direction]
    return args


TEACH_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # the engine's catalog names


def teach_args(examples: PathLike, model: str, name: str, *, device: str = "auto",
               steps: int | None = None, start_from: str | None = None,
               minutes: float | None = None) -> list[str]:
    """`teach EXAMPLES --model M --name NAME`: a model taught from the accepted structures, added to the
    catalog; `start_from` (a model taught before, `--from`) makes it an incremental teach that builds on
    it, `minutes` a time budget."""
    name = (name or "").strip()
    if not TEACH_NAME.fullmatch(name):
        raise ValueError("Name the model to teach with lower-case letters, digits, '.', '_' or '-' (e.g. my-organs).")
    args = ["teach", str(examples), *model_args(model, device, None), "--name", name]
    if steps is not None:
        args += ["--steps", str(int(steps))]
    if start_from:
        args += ["--from", str(start_from)]
    if minutes is not None:
        if not minutes > 0:
            raise ValueError("The teach time budget must be a positive number of minutes.")
        args += ["--minutes", f"{float(minutes):g}"]
    return args + ["--progress", "jsonl"]


def export_file_name(base_name: str, fmt: str) -> str:
    """The name of an export output: a safe version of the segmentation's name plus the format's ending."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    return safe_file_stem(base_name) + EXPORT_FORMATS[fmt]


def safe_file_stem(name: str) -> str:
    """A node name made safe as a file name on every platform (letters, digits, - and _ kept)."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.strip()).strip("_")
    return stem or "segmentation"


def selected_structures(all_names: Iterable[str], checked: Iterable[str]) -> list[str] | None:
    """The --structures list for the checklist: None when everything is checked (the default)."""
    names = list(all_names)
    chosen = [n for n in names if n in set(checked)]
    return None if len(chosen) == len(names) else chosen


def model_args(model: str, device: str, backbone: str | None) -> list[str]:
    """--model (a catalog name or bundle folder), --device, and --backbone: encoder weights that
    replace the bundle's (a .safetensors/.pt/.ckpt file or a Hugging Face hub id)."""
    model = (model or "").strip()
    if not model:
        raise ValueError("Choose a model first (or add one with \"Add model...\").")
    args = ["--model", model, "--device", engine_device(device)]
    if backbone and backbone.strip():
        args += ["--backbone", backbone.strip()]
    return args

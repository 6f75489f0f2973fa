"""Accepted structures kept as labelled examples: the one home of their folder layout.

Layout (written by the interactive session when a structure is accepted, read back by a restarted
session and by `coralbay teach`):

    <examples>/<scan id>/example.json       {"scan": path of the scan, "model": {"name", "encoder_sha256"},
                                              "structures": {name: {"value", "mask", "accepted_at"}}}
    <examples>/<scan id>/<structure>.nii.gz  the accepted mask (0/1) on the scan's own grid

Why the encoder is recorded: examples are only meaningful to the encoder whose features they
were accepted on (a restarted session reuses them as feature rows, teach trains a decoder on that
encoder), so a reader can refuse examples of another encoder instead of mixing them silently.
The scan id is derived from the scan content, the encoder and the preprocessing, so the same scan
opened again with the same model finds its folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import write_text_atomic
from coralbay.errors import InputError
from coralbay.io.volumes import write_image

RECORD_NAME = "example.json"


@dataclass(frozen=True)
class AcceptedStructure:
    name: str
    value: int
    mask: Path          # the mask file (0/1 on the scan's grid)


@dataclass
class ExampleScan:
    """One scan's accepted structures, as kept on disk."""

    folder: Path
    scan: str                                  # the scan's path when it was accepted ("" if unknown)
    model_name: str | None = None
    encoder_sha256: str | None = None          # None for examples written before it was recorded
    structures: list[AcceptedStructure] = field(default_factory=list)

    @property
    def scan_id(self) -> str:
        return self.folder.name

    def read_mask(self, structure: AcceptedStructure) -> np.ndarray:
        """The mask as a bool array (z, y, x)."""
        from coralbay.io.volumes import read_image_any  # verified like every other read

        return sitk.GetArrayFromImage(read_image_any(structure.mask)) > 0


def write_accepted(examples_dir: str | os.PathLike, scan_id: str, scan_path: str, name: str, value: int,
                   mask_zyx: np.ndarray, reference: sitk.Image, model_name: str = "",
                   encoder_sha256: str = "") -> Path:
    """Keep one accepted structure: its mask beside the scan's record (both written atomically)."""
    folder = Path(examples_dir) / scan_id
    folder.mkdir(parents=True, exist_ok=True)
    mask = sitk.GetImageFromArray(np.asarray(mask_zyx, np.uint8))
    mask.CopyInformation(reference)
    write_image(mask, folder / f"{name}.nii.gz")
    record = folder / RECORD_NAME
    data = _read_record(record) if record.is_file() else {"scan": scan_path, "structures": {}}
    if model_name or encoder_sha256:
        data["model"] = {"name": model_name, "encoder_sha256": encoder_sha256}
    data["structures"][name] = {"value": int(value), "mask": f"{name}.nii.gz",
                                "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(record, json.dumps(data, indent=2) + "\n")
    return folder


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"The example record {path} is not readable JSON ({exc}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("structures"), dict):
        raise InputError(f"The example record {path} has no 'structures' object.")
    return data


def read_example_scan(folder: str | os.PathLike) -> ExampleScan:
    """One scan folder of the layout; structures whose mask file is missing are left out."""
    folder = Path(folder)
    data = _read_record(folder / RECORD_NAME)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    scan = ExampleScan(folder, str(data.get("scan") or ""), model.get("name") or None,
                       model.get("encoder_sha256") or None)
    for name, entry in data["structures"].items():
        if not isinstance(entry, dict):
            raise InputError(f"The example record {folder / RECORD_NAME} describes {name!r} badly.")
        mask = folder / str(entry.get("mask") or f"{name}.nii.gz")
        if mask.is_file():
            scan.structures.append(AcceptedStructure(str(name), int(entry.get("value", 0)), mask))
    return scan


def read_examples(examples_dir: str | os.PathLike) -> list[ExampleScan]:
    """Every scan folder under `examples_dir` that holds a record (sorted by scan id)."""
    root = Path(examples_dir)
    if not root.is_dir():
        return []
    return [read_example_scan(p.parent) for p in sorted(root.glob(f"*/{RECORD_NAME}"))]

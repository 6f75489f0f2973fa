"""Accepted structures kept as labelled examples: the one home of their folder layout.

Layout (written by the interactive session when a structure is accepted, read back by a restarted
session, by `coralbay teach` and by the Slicer module, which keeps the scans beside them):

    <examples>/<scan id>/example.json       {"scan": path of the scan, "model": {"name", "encoder_sha256"},
                                              "structures": {name: {"value", "mask", "accepted_at"}}}
    <examples>/<scan id>/<structure>.nii.gz  the accepted mask (0/1) on the scan's own grid
    <examples>/scans/<content hash>.<ext>    scans kept by the Slicer module while an example refers to them

Why the encoder is recorded: examples are only meaningful to the encoder whose features they
were accepted on (a restarted session reuses them as feature rows, teach trains a decoder on that
encoder), so a reader can refuse examples of another encoder instead of mixing them silently.
The scan id is derived from the scan content, the encoder and the preprocessing, so the same scan
opened again with the same model finds its folder.

Standard library only: the Slicer module reads the layout before PyTorch or the engine's numeric
packages are installed. The masks themselves are read and written by `coralbay.io.example_masks`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from coralbay.atomic import write_text_atomic
from coralbay.errors import InputError

RECORD_NAME = "example.json"
SCANS_FOLDER = "scans"      # the scans the examples were accepted on, kept by the Slicer module


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


def mask_path(examples_dir: str | os.PathLike, scan_id: str, name: str) -> Path:
    return Path(examples_dir) / scan_id / f"{name}.nii.gz"


def record_accepted(examples_dir: str | os.PathLike, scan_id: str, scan_path: str, name: str, value: int,
                    model_name: str = "", encoder_sha256: str = "") -> Path:
    """Add one accepted structure to the scan's record (atomically); its mask is written first."""
    folder = Path(examples_dir) / scan_id
    record = folder / RECORD_NAME
    data = _read_record(record) if record.is_file() else {"scan": scan_path, "structures": {}}
    if model_name or encoder_sha256:
        data["model"] = {"name": model_name, "encoder_sha256": encoder_sha256}
    data["structures"][name] = {"value": int(value), "mask": mask_path(examples_dir, scan_id, name).name,
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


def readable_examples(examples_dir: str | os.PathLike) -> list[ExampleScan]:
    """Like `read_examples`, but a damaged record is skipped (clients listing what is there)."""
    scans = []
    for record in sorted(Path(examples_dir).glob(f"*/{RECORD_NAME}")):
        with contextlib.suppress(InputError, ValueError, TypeError):
            scans.append(read_example_scan(record.parent))
    return scans


def has_examples(examples_dir: str | os.PathLike) -> bool:
    """True when at least one scan record is there (something was accepted)."""
    return any(Path(examples_dir).glob(f"*/{RECORD_NAME}"))


def example_masks(examples_dir: str | os.PathLike) -> dict[str, Path]:
    """Accepted structures kept on disk, by name (the last scan's, for a name accepted twice)."""
    return {s.name: s.mask for scan in readable_examples(examples_dir) for s in scan.structures}


def kept_scans(examples_dir: str | os.PathLike) -> list[Path]:
    """The scans kept in `<examples>/scans/` (see SCANS_FOLDER)."""
    folder = Path(examples_dir) / SCANS_FOLDER
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


def scans_in_use(examples_dir: str | os.PathLike) -> set[Path]:
    """The scans (resolved paths) that some record refers to: deleting them would orphan examples."""
    used = set()
    for record in Path(examples_dir).glob(f"*/{RECORD_NAME}"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            scan = json.loads(record.read_text(encoding="utf-8")).get("scan")
            if scan:
                used.add(Path(scan).resolve())
    return used

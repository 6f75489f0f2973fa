"""Reading and checking a cohort: a CSV (`id,image[,reference][,point]`) or a folder of scans.

Why check everything up front: a typo in the cohort (a missing file, a duplicate id) should stop
the run before hours of work, with one sentence, while a scan that exists but cannot be read is
a per-case failure found by the worker that reads it (it fails alone).
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from coralbay.errors import InputError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a safe folder name on every system
REQUIRED_COLUMNS = ("id", "image")
OPTIONAL_COLUMNS = ("reference", "point")


@dataclass(frozen=True)
class Case:
    """One scan of the cohort; paths are absolute (workers read them from shared storage)."""

    id: str
    image: str
    reference: str | None = None
    point_lps: tuple[float, float, float] | None = None


# A folder's files named like these are reference label maps of the scan beside them
# (liver_seg.nii.gz of liver.nii.gz), never scans: segmenting one as CT gave a 1,063 mL "liver".
REFERENCE_MARKERS = ("_truth", "_label", "_labels", "_seg", "_mask", "_gt", ".seg")
COHORT_FILE = "cohort.csv"  # a folder holding this file is read through it


def read_cohort(path: str | os.PathLike, volume_suffixes: Sequence[str],
                notes: list[str] | None = None) -> list[Case]:
    """The cases of a cohort CSV or folder, checked: unique safe ids, existing inputs.

    `notes` receives sentences the user should read about how a folder was read (its cohort.csv
    used, reference label maps left out or paired with their scans).
    """
    notes = notes if notes is not None else []
    path = Path(path)
    if path.is_dir() and (path / COHORT_FILE).is_file():
        notes.append(f"The folder {path} holds {COHORT_FILE}; the cohort is read from it, not from the folder's files.")
        path = path / COHORT_FILE
    if path.is_dir():
        cases = _folder_cases(path, volume_suffixes, notes)
    elif path.is_file():
        cases = _csv_cases(path)
    else:
        raise InputError(f"The cohort {path} does not exist; give a CSV file or a folder of scans.")
    if not cases:
        raise InputError(f"The cohort {path} lists no scans.")
    _check_unique(cases, path)
    for case in cases:
        for role, file in (("image", case.image), ("reference", case.reference)):
            if file is not None and not os.path.exists(file):
                raise InputError(f"The {role} {file} of case {case.id} does not exist.")
    return cases


def _check_unique(cases: list[Case], source: Path) -> None:
    seen: dict[str, str] = {}
    for case in cases:
        key = case.id.lower()  # case-insensitive file systems would merge a/ and A/
        if key in seen:
            raise InputError(f"The cohort {source} has the id {case.id!r} more than once "
                             f"(also as {seen[key]!r}); every case needs its own id.")
        seen[key] = case.id


def _check_id(case_id: str, where: str) -> str:
    if not ID_PATTERN.match(case_id):
        raise InputError(f"The id {case_id!r} in {where} is not usable as a folder name; use letters, "
                         "digits, '.', '_' and '-' (at most 128, starting with a letter or digit).")
    return case_id


def _parse_point(text: str, case_id: str) -> tuple[float, float, float] | None:
    if not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"The point {text!r} of case {case_id} must be three numbers x,y,z in mm (LPS).")
    return values  # type: ignore[return-value]


def _csv_cases(path: Path) -> list[Case]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"The cohort file {path} cannot be read as a UTF-8 CSV ({reason}).") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError(f"The cohort file {path} is empty; it needs a header line 'id,image'.")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"The cohort file {path} has no {' or '.join(missing)} column; its first line "
                         "must name the columns id,image and optionally reference,point.")
    unknown = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise InputError(f"The cohort file {path} has unknown column(s) {', '.join(unknown)}; "
                         "known: id, image, reference, point.")
    base = path.parent
    cases = []
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"Line {line_number} of {path} has {len(row)} fields, the header {len(header)}.")
        cell = {h: v.strip() for h, v in zip(header, row)}
        where = f"line {line_number} of {path}"
        case_id = _check_id(cell["id"], where)
        if not cell["image"]:
            raise InputError(f"Case {case_id} ({where}) has no image.")
        reference = cell.get("reference") or None
        cases.append(Case(case_id, _absolute(cell["image"], base),
                          _absolute(reference, base) if reference else None,
                          _parse_point(cell.get("point", ""), case_id)))
    return cases


def _absolute(file: str, base: Path) -> str:
    """Relative paths in a CSV are relative to the CSV's folder, as a user would expect."""
    p = Path(file).expanduser()
    return str(p if p.is_absolute() else (base / p).absolute())


def _folder_cases(folder: Path, volume_suffixes: Sequence[str], notes: list[str]) -> list[Case]:
    """Each visible entry is a scan (a volume file, or a folder: a DICOM series), except
    reference label maps (REFERENCE_MARKERS), which become the reference of their scan."""
    scans: dict[str, Path] = {}
    references: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            stem = entry.name
        else:
            suffix = next((s for s in volume_suffixes if entry.name.lower().endswith(s)), None)
            if suffix is None:
                continue  # notes, spreadsheets and the like beside the scans
            stem = entry.name[: -len(suffix)]
        marker = next((m for m in REFERENCE_MARKERS if stem.lower().endswith(m) and len(stem) > len(m)), None)
        if marker is not None and not entry.is_dir():
            references[stem[: -len(marker)]] = entry
        else:
            scans[stem] = entry
    if references:
        paired = sum(stem in scans for stem in references)
        notes.append(f"Left out {len(references)} reference label map(s) of {folder} (named *_seg, *_label, "
                     f"*_mask, *_truth...): they are not scans; {paired} paired with their scan as its "
                     "reference for --compare.")
    return [Case(_check_id(stem, f"the folder {folder}"), str(entry.absolute()),
                 str(references[stem].absolute()) if stem in references else None)
            for stem, entry in scans.items()]

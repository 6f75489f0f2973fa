"""A DICOM study as it arrives on a CD, a USB stick or from a PACS export: the series in a folder.

Why: users hand us the folder they were given (a DICOMDIR at the top, one subfolder per series,
or simply one series folder), not the series folder we need. Here every image series in it is
found (from the DICOMDIR's records when there is one: they name exactly the files of the
file-set; otherwise from the files at any depth), each is judged a regular CT volume or not and
why not (localizer, RGB, single slice, tilted, uneven, not CT, files missing), and one is chosen:
the series the user named (`--series` number or SeriesInstanceUID), or else the only regular CT
volume, announced on stderr; otherwise one sentence lists the choices (a usage error).

Safety, since a CD is untrusted: every file goes through `dicom_checks` (a damaged file is refused
by name); a DICOMDIR path is resolved component by component among the names that exist in the
study folder (case-insensitively: CDs are written in upper case, and ISO 9660 ";1" versions are
ignored), never through "..", an absolute path or a link leading out of the study folder, and the
walk without a DICOMDIR neither follows linked folders nor reads linked files outside the study.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from coralbay.errors import InputError, UsageError
from coralbay.io.dicom_checks import (DicomSeries, StackGeometry, _quiet, _text, check_series_geometry,
                                      group_series, read_header)

MAX_DEPTH = 16  # folder levels searched below the study folder
MAX_FILES = 200_000  # files in one study (a whole-body CT study with many series has ~10,000)
log = logging.getLogger("coralbay.io")
_announced: set[tuple[str, str]] = set()  # (folder, series UID) already announced by this process


@dataclass(frozen=True)
class Study:
    """The image series found in a folder and what was left out."""

    folder: Path
    series: tuple[DicomSeries, ...]
    skipped: tuple[str, ...]  # "SE2/IM1 (not DICOM)", "IMAGES/IM9 (named in the DICOMDIR, missing)"
    dicomdir: Path | None
    nested: bool  # some series files lie in subfolders

    def left_out(self, count: bool = True) -> str:
        """The files left out, as a phrase for a message ('' if none)."""
        if not self.skipped:
            return ""
        shown = "; ".join(self.skipped[:3]) + ("; ..." if len(self.skipped) > 3 else "")
        return f"{len(self.skipped)} other file(s) in the folder were left out: {shown}" if count else shown

    @property
    def plain_series_folder(self) -> bool:
        """A folder that simply holds the files of one series (how series were read before studies)."""
        return self.dicomdir is None and not self.nested and len(self.series) == 1


@dataclass(frozen=True)
class SeriesCheck:
    """One series of a study, judged: can it be read, and is it a regular CT volume?"""

    series: DicomSeries
    geometry: StackGeometry | None  # None when the series cannot be read as a volume
    problem: str  # why it is not a regular CT volume ('' when it is one)
    error: InputError | None  # why it cannot be read at all (None: readable, perhaps resampled)

    @property
    def regular_ct(self) -> bool:
        return not self.problem

    @property
    def size(self) -> tuple[int, int, int] | None:
        """(columns, rows, slices): measured, else as the first header states (a single slice...)."""
        if self.geometry is not None:
            return (*self.geometry.size, len(self.geometry.positions))
        if not self.series.headers:
            return None
        first = self.series.headers[0]
        columns, rows, frames = (_text(first, k) for k in ("Columns", "Rows", "NumberOfFrames"))
        if not (columns.isdigit() and rows.isdigit()):
            return None
        slices = int(frames) if frames.isdigit() and len(self.series.files) == 1 else len(self.series.files)
        return int(columns), int(rows), slices

    @property
    def spacing_mm(self) -> tuple[float, float, float] | None:
        """(x, y, slice step) in mm, when the series' geometry could be measured."""
        if self.geometry is None:
            return None
        return (*self.geometry.pixel_spacing, round(self.geometry.median_step, 6))

    def summary(self, root: Path) -> dict:
        """What `coralbay info` lists for the series (JSON-ready; folders relative to `root`)."""
        s = self.series
        return {"number": s.number, "uid": s.uid, "description": s.description, "modality": s.modality,
                "folders": sorted({os.path.dirname(os.path.relpath(f, root)) or "." for f in s.files}),
                "files": len(s.files),
                "size": list(self.size) if self.size else None,
                "spacing_mm": [round(v, 6) for v in self.spacing_mm] if self.spacing_mm else None,
                "slices": self.size[2] if self.size else None,
                "regular_ct": self.regular_ct, "problem": self.problem or None,
                "missing_files": list(s.missing)}

    def choice(self, with_uid: bool = False) -> str:
        """The series as one item of a list of choices."""
        s = self.series
        name = f"series {s.number}" if s.number and not with_uid else f"series UID {s.uid}"
        text = f' "{s.description}"' if s.description else ""
        shape = f", {' x '.join(map(str, self.size))}" if self.size else ""
        verdict = "regular CT volume" if self.regular_ct else self.problem
        return f"{name}{text} ({s.modality or 'no modality'}{shape}: {verdict})"


# ---- finding the series -----------------------------------------------------------------------

def find_study(folder: str | os.PathLike) -> Study:
    """Every image series in `folder`: the DICOMDIR's files when it has one, else all files below."""
    root = Path(folder)
    try:
        real_root = root.resolve(strict=True)
        names = os.listdir(root)
    except OSError as exc:
        raise InputError(f"The folder {root} cannot be listed ({exc.strerror}).") from None
    dicomdir = next((root / n for n in sorted(names) if n.upper() == "DICOMDIR" and (root / n).is_file()), None)
    if dicomdir is not None:
        paths, missing, records = _dicomdir_files(root, real_root, dicomdir)
        skipped: list[str] = []
    else:
        paths, skipped = _walk(root, real_root)
        missing, records = {}, {}
    series, left_out = group_series(paths, root)
    series = _add_missing(series, missing, records)
    skipped += left_out + [f"{name} (named in the DICOMDIR, missing)" for name in missing.get("", [])]
    nested = any(os.path.dirname(os.path.relpath(f, root)) for s in series for f in s.files)
    return Study(root, tuple(series), tuple(skipped), dicomdir, nested)


def _walk(root: Path, real_root: Path) -> tuple[list[Path], list[str]]:
    """All files below `root` (sorted, at most MAX_DEPTH levels), links leading outside left out."""
    files: list[Path] = []
    skipped: list[str] = []

    def refuse(error: OSError) -> None:
        raise InputError(f"The folder {error.filename} cannot be listed ({error.strerror}).")

    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse):  # never follows linked folders
        here = Path(dirpath)
        if len(here.relative_to(root).parts) >= MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink() and not _inside(path, real_root):
                skipped.append(f"{os.path.relpath(path, root)} (a link to a file outside the study folder)")
                continue
            files.append(path)
        if len(files) > MAX_FILES:
            raise InputError(f"The folder {root} holds more than {MAX_FILES} files; give the folder of one "
                             "study or series.")
    return files, skipped


def _inside(path: Path, real_root: Path) -> bool:
    return path.resolve().is_relative_to(real_root)


@_quiet
def _dicomdir_files(root: Path, real_root: Path, dicomdir: Path):
    """The files a DICOMDIR names, following its record hierarchy.

    Returns (existing paths, {series UID or "": [missing names]}, {series UID: SERIES record}).
    """
    ds = read_header(dicomdir)
    if ds is None or "DirectoryRecordSequence" not in ds:
        raise InputError(f"The DICOMDIR {dicomdir} is not a DICOM directory file.")
    paths: dict[Path, None] = {}  # insertion-ordered set
    missing: dict[str, list[str]] = {}
    series_records: dict[str, object] = {}
    listings: dict[Path, list[str]] = {}
    try:
        records = list(ds.DirectoryRecordSequence)
        first = int(ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity", 0) or 0)
        for record, series in _file_records(records, first):
            uid = _text(series, "SeriesInstanceUID") if series is not None else ""
            if uid:
                series_records.setdefault(uid, series)
            parts = _file_id(record, dicomdir)
            path = _resolve(root, real_root, parts, listings, dicomdir)
            if path is None:
                missing.setdefault(uid, []).append("/".join(parts))
            else:
                paths[path] = None
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged records
        raise InputError(f"The DICOMDIR {dicomdir} is damaged (its directory records cannot be read).") from None
    if not paths and not missing:
        raise InputError(f"The DICOMDIR {dicomdir} names no files.")
    return list(paths), missing, series_records


def _file_records(records: Sequence, first: int):
    """(record naming a file, its SERIES record or None), following the offsets of the hierarchy
    (each record visited once, so cyclic offsets cannot loop). Records the offsets do not reach
    (orphans, or offsets left stale by an editor) follow, each under the SERIES record before it
    in the sequence, as writers store the hierarchy depth first."""
    by_offset = {getattr(r, "seq_item_tell", None): r for r in records}
    seen: set[int] = set()
    stack = [(first, None)]
    while stack:
        offset, series = stack.pop()
        while offset in by_offset and offset not in seen:
            seen.add(offset)
            record = by_offset[offset]
            current = record if _text(record, "DirectoryRecordType").upper() == "SERIES" else series
            if "ReferencedFileID" in record:
                yield record, current
            lower = int(record.get("OffsetOfReferencedLowerLevelDirectoryEntity", 0) or 0)
            if lower:
                stack.append((lower, current))
            offset = int(record.get("OffsetOfTheNextDirectoryRecord", 0) or 0)
    series = None
    for offset, record in by_offset.items():
        if _text(record, "DirectoryRecordType").upper() == "SERIES":
            series = record
        if offset not in seen and "ReferencedFileID" in record:
            yield record, series


def _file_id(record, dicomdir: Path) -> list[str]:
    """The components of a record's ReferencedFileID; one written with slashes or backslashes in a
    single value is split too. Absolute paths and '..' are refused: they lead out of the study."""
    value = record.ReferencedFileID
    values = [value] if isinstance(value, (str, bytes)) else list(value)
    parts = [p.strip() for v in values for p in str(v).replace("\\", "/").split("/")]
    shown = "\\".join(str(v) for v in values)
    if not parts or any(p in ("", ".", "..") or ":" in p for p in parts) or str(values[0]).startswith(("/", "\\")):
        raise InputError(f"The DICOMDIR {dicomdir} names the file {shown}, which would lie outside the "
                         "study folder; the study is not read.")
    return parts


def _key(name: str) -> str:
    """A name as a DICOMDIR may spell it: upper case, without an ISO 9660 ';1' version or final dot."""
    return name.split(";")[0].rstrip(".").upper()


def _resolve(root: Path, real_root: Path, parts: list[str], listings: dict[Path, list[str]],
             dicomdir: Path) -> Path | None:
    """The existing file named by `parts`, each matched among the names really in its folder
    (exactly, else case-insensitively); None when missing. Refuses a path leading out of the study."""
    current = root
    for part in parts:
        if current not in listings:
            try:
                listings[current] = sorted(os.listdir(current)) if current.is_dir() else []
            except OSError:
                listings[current] = []
        names = listings[current]
        if part in names:
            current = current / part
            continue
        matches = [n for n in names if _key(n) == _key(part)]
        if len(matches) != 1:
            return None
        current = current / matches[0]
    if not _inside(current, real_root):
        raise InputError(f"The DICOMDIR {dicomdir} names {'/'.join(parts)}, a link to a file outside the "
                         "study folder; the study is not read.")
    return current if current.is_file() else None


def _add_missing(series: list[DicomSeries], missing: dict[str, list[str]], records: dict) -> list[DicomSeries]:
    """Attach each series' missing files (a series whose files are all missing still appears)."""
    by_uid = {s.uid: s for s in series}
    for uid, names in missing.items():
        if not uid:
            continue
        if uid in by_uid:
            s = by_uid[uid]
            by_uid[uid] = DicomSeries(s.uid, s.number, s.description, s.modality, s.files, s.headers,
                                      tuple(names))
        else:
            record = records.get(uid)
            by_uid[uid] = DicomSeries(uid, _text(record, "SeriesNumber"), _text(record, "SeriesDescription"),
                                      _text(record, "Modality"), (), missing=tuple(names))
    return list(by_uid.values())


# ---- judging and choosing ---------------------------------------------------------------------

def check_series(series: DicomSeries) -> SeriesCheck:
    """Judge one series: readable or not (and why), regular CT volume or not (and why not)."""
    if series.missing:
        count = len(series.missing)
        error = InputError(f"The DICOMDIR names {count} file{'s' if count > 1 else ''} of {series.label()} "
                           f"that {'are' if count > 1 else 'is'} missing ({', '.join(series.missing[:3])}"
                           f"{', ...' if count > 3 else ''}); the series is incomplete.")
        return SeriesCheck(series, None, f"{count} file(s) named in the DICOMDIR missing", error)
    first = series.headers[0] if series.headers else None
    problem = ""
    if first is not None:
        photometric = _text(first, "PhotometricInterpretation").upper()
        image_type = _text(first, "ImageType").upper()
        frames = _text(first, "NumberOfFrames")
        if photometric and not photometric.startswith("MONOCHROME"):
            problem = f"RGB/colour pixels ({photometric})"
        elif "LOCALIZER" in image_type:
            problem = "localizer"
        elif len(series.files) == 1 and (not frames.isdigit() or int(frames) < 2):
            problem = "single slice"
    try:
        geometry = check_series_geometry(series.files, series.headers)
        error = None
    except InputError as exc:
        geometry, error = None, exc
    if not problem and error is not None:
        problem = f"not one volume: {str(error).rstrip('.')}"
    if not problem and series.modality.upper() != "CT":
        problem = f"modality {series.modality or 'not given'}, not CT"
    if not problem and geometry is not None and not geometry.regular:
        problem = geometry.irregularity()
    return SeriesCheck(series, geometry, problem, error)


def check_study(folder: str | os.PathLike) -> tuple[Study, list[SeriesCheck]]:
    """The study in `folder` and each of its series judged, in series-number order."""
    study = find_study(folder)
    checks = [check_series(s) for s in study.series]
    checks.sort(key=lambda c: (_number(c.series.number), c.series.uid))
    return study, checks


def _number(text: str) -> tuple[int, str]:
    try:
        return int(text), text
    except ValueError:
        return 1 << 31, text


def automatic_choice(checks: Sequence[SeriesCheck]) -> SeriesCheck | None:
    """The series read when none is named: the only series, else the only regular CT volume."""
    if len(checks) == 1:
        return checks[0]
    regular = [c for c in checks if c.regular_ct]
    return regular[0] if len(regular) == 1 else None


def select_series(folder: str | os.PathLike, wanted: str | None = None,
                  announce: Callable[[str], None] | None = None) -> tuple[Study, SeriesCheck]:
    """The series of the study in `folder` to read: `wanted` (a SeriesNumber or SeriesInstanceUID),
    or the automatic choice, announced (`announce`, default a logged warning) unless the folder
    is a plain series folder. UsageError (exit 2) lists the choices when there is no single one;
    InputError when the chosen series has files missing."""
    study, checks = check_study(folder)
    if not checks:
        raise InputError(f"The folder {folder} holds no DICOM image series"
                         f"{f' ({study.left_out(count=False)})' if study.skipped else ''}.")
    if wanted is not None:
        chosen = _named(folder, checks, wanted.strip())
    else:
        chosen = automatic_choice(checks)
        if chosen is None:
            regular = sum(c.regular_ct for c in checks)
            raise UsageError(f"The folder {folder} holds {len(checks)} DICOM image series, "
                             f"{_how_many(regular)}; choose one with --series "
                             f"NUMBER (or its SeriesInstanceUID): {_choices(checks)}.")
        if not study.plain_series_folder:
            _announce(folder, study, checks, chosen, announce)
    if chosen.series.missing:
        raise chosen.error  # type: ignore[misc]
    return study, chosen


def _named(folder, checks: Sequence[SeriesCheck], wanted: str) -> SeriesCheck:
    by_uid = [c for c in checks if c.series.uid == wanted]
    if by_uid:
        return by_uid[0]
    by_number = [c for c in checks if c.series.number and _number(c.series.number) == _number(wanted)]
    if len(by_number) == 1:
        return by_number[0]
    if by_number:
        raise UsageError(f"The folder {folder} holds {len(by_number)} series numbered {wanted}; give the "
                         f"SeriesInstanceUID to --series instead: {_choices(by_number, with_uid=True)}.")
    raise UsageError(f"The folder {folder} holds no series {wanted}; choose one with --series NUMBER "
                     f"(or its SeriesInstanceUID): {_choices(checks)}.")


def _how_many(regular: int) -> str:
    if regular == 0:
        return "none of them a regular CT volume"
    return f"{regular} of them regular CT volumes" if regular > 1 else "one of them a regular CT volume"


def _choices(checks: Sequence[SeriesCheck], with_uid: bool = False) -> str:
    numbers = [c.series.number for c in checks]
    return "; ".join(c.choice(with_uid or not c.series.number or numbers.count(c.series.number) > 1)
                     for c in checks)


def _announce(folder, study: Study, checks: Sequence[SeriesCheck], chosen: SeriesCheck,
              announce: Callable[[str], None] | None) -> None:
    key = (str(Path(folder).resolve()), chosen.series.uid)
    if key in _announced:
        return  # read twice in one command (a DICOM SEG export reads the series and its files)
    _announced.add(key)
    why = ("its only image series" if len(checks) == 1 else
           f"the only regular CT volume of its {len(checks)} series; --series chooses another")
    s = chosen.series
    name = f"series {s.number}" if s.number else "the series"
    text = f' "{s.description}"' if s.description else ""
    (announce or log.warning)(f"Reading {name}{text} (UID {s.uid}) of {folder}: {why}.")

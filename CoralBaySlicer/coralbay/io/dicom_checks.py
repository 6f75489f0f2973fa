"""Finding, validating and measuring a DICOM series before its pixels are decoded.

Why pydicom before ITK: GDCM (ITK's DICOM reader) silently drops files it cannot parse, spends
seconds per file on damaged element lengths, and stacks slices assuming even spacing and a common
orientation. We therefore scan the folder and read every header with pydicom (pure Python, no
pixel decoding), refuse damaged or contradictory files by name, and measure the slice geometry
ourselves. ITK then only decodes an already validated, sorted list of files, and the geometry of
the volume is the one measured here (`StackGeometry`), never a guess.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from coralbay.errors import InputError
from coralbay.io.header_checks import check_fits_in_memory

SPACING_TOLERANCE = 0.01  # relative deviation of a slice step from the median step
SHEAR_TOLERANCE = 0.01  # in-plane offset between slices, relative to the median step
ORIENTATION_TOLERANCE = 1e-3  # difference of direction cosines between slices
MAX_GAP_STEPS = 2.5  # gaps up to this many median steps (one missing slice) are interpolated
POSITION_LIMIT_MM = 1e6

# Objects that are not image volumes even when they carry pixel data.
# CT, enhanced/legacy CT, MR, enhanced MR, PET, enhanced PET, secondary capture: image objects that
# always carry pixels, so one without them is a cut file (not an object to leave out).
IMAGE_STORAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1." + c for c in ("2", "2.1", "2.2", "4", "4.1", "128", "130", "7")}
NON_VOLUME_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR",
                         "PR", "KO", "REG", "DOC", "RWV", "FID", "PLAN"}
NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                            "1.2.840.10008.1.2.1.99"}
# What GDCM (inside ITK) decodes: native, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE.
ENCAPSULATED_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                                  "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                                  "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                                  "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                  "1.2.840.10008.1.2.5"}
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
UNDEFINED_LENGTH = 0xFFFFFFFF
HEADER_DEFER_BYTES = 4096  # values larger than this (pixel data) are not loaded, only bounds-checked


@dataclass(frozen=True)
class DicomSeries:
    """The image files of one series found in a folder."""

    uid: str
    number: str
    description: str
    modality: str
    files: tuple[str, ...]
    headers: tuple = field(default=(), compare=False, repr=False)  # pydicom datasets, read once
    missing: tuple[str, ...] = ()  # files a DICOMDIR names for this series that are not there

    def label(self) -> str:
        name = f"series {self.number}" if self.number else "a series"
        text = f' "{self.description}"' if self.description else ""
        files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        return f"{name}{text} ({self.modality or 'no modality'}, {files}, UID ...{self.uid[-12:]})"


@dataclass(frozen=True)
class StackGeometry:
    """Where each slice of a series lies, in stacking order (ascending along the slice normal).

    `files[k]`/`frames[k]` give the source of slice k: for a multi-frame file, `files` holds one
    name and `frames` the frame indices; for single-frame files `frames` is None.
    """

    files: tuple[str, ...]
    frames: tuple[int, ...] | None
    positions: np.ndarray  # (n, 3) LPS mm, in stacking order
    row: np.ndarray  # direction of increasing column index (DICOM IOP first triplet)
    col: np.ndarray  # direction of increasing row index (second triplet)
    pixel_spacing: tuple[float, float]  # (along row, along column) = (x, y) spacing in mm
    size: tuple[int, int]  # (columns, rows)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    @property
    def along(self) -> np.ndarray:
        """Slice positions along the normal relative to the first slice (mm, ascending)."""
        return (self.positions - self.positions[0]) @ self.normal

    @property
    def steps(self) -> np.ndarray:
        return np.diff(self.along)

    @property
    def median_step(self) -> float:
        return float(np.median(self.steps))

    @property
    def in_plane_offsets(self) -> np.ndarray:
        """(n, 2) offset of each slice's first pixel from the first slice's, along row and col (mm)."""
        delta = self.positions - self.positions[0]
        return np.stack([delta @ self.row, delta @ self.col], axis=1)

    @property
    def sheared(self) -> bool:
        """Slices do not lie straight above each other (gantry tilt or a sheared stack)."""
        return bool(np.abs(self.in_plane_offsets).max() > SHEAR_TOLERANCE * self.median_step + 1e-3)

    @property
    def uneven(self) -> bool:
        return bool(np.abs(self.steps - self.median_step).max() > SPACING_TOLERANCE * self.median_step)

    @property
    def regular(self) -> bool:
        return not (self.sheared or self.uneven)

    def irregularity(self) -> str:
        """What makes the stack irregular, as a phrase for a message."""
        parts = []
        if self.uneven:
            parts.append(f"unevenly spaced slices ({self.steps.min():.3g} to {self.steps.max():.3g} mm apart)")
        if self.sheared:
            shift = float(np.linalg.norm(self.in_plane_offsets[-1]))
            angle = math.degrees(math.atan2(shift, float(self.along[-1])))
            parts.append(f"slices shifted sideways along the stack (tilted by {angle:.1f} degrees, "
                         "e.g. gantry tilt)")
        return " and ".join(parts)


def _quiet(function):
    """Silence pydicom's warnings about odd values: we refuse what matters in one sentence, and
    warnings on stderr would precede it (the `coralbay` promise is one line)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return function(*args, **kwargs)
    return wrapper


# ---- reading headers --------------------------------------------------------------------------

@_quiet
def read_header(path: str | os.PathLike):
    """The pydicom dataset of `path` without pixel values, or None if it is not a DICOM file.

    Raises InputError when the file claims to be DICOM but is damaged (unparsable, or an element
    that runs past the end of the file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = str(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=HEADER_DEFER_BYTES)
        if any("End of file reached" in str(w.message) for w in caught):
            # pydicom warns and returns an empty dataset when the file's end cuts an element of
            # undefined length (encapsulated JPEG 2000 or JPEG pixel data): a cut file, not a non-image.
            raise InputError(f"The DICOM file {path} is truncated (it ends inside an element; an "
                             "interrupted copy or download?).")
    except InvalidDicomError:
        try:  # old files without the 128-byte preamble are still DICOM if they hold an image
            ds = pydicom.dcmread(path, defer_size=HEADER_DEFER_BYTES, force=True)
            if "Rows" not in ds or "PixelData" not in ds:
                return None
        except Exception:  # noqa: BLE001 - not DICOM at all
            return None
    except IsADirectoryError:
        return None
    except PermissionError:
        raise InputError(f"The file {path} cannot be opened (permission denied).") from None
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise InputError(f"The DICOM file {path} is damaged ({_short(exc)}).") from None
    _check_element_bounds(ds, path)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and _text(meta, "MediaStorageSOPClassUID") in IMAGE_STORAGE_CLASSES and not any(
            k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"The DICOM file {path} is truncated or damaged (an image object without its "
                         "pixel data).")
    return ds


def _check_element_bounds(ds, path: str) -> None:
    """Refuse elements whose stated length runs past the end of the file (truncated or garbage)."""
    from pydicom.dataelem import RawDataElement

    file_size = os.path.getsize(path)
    for element in getattr(ds, "_dict", {}).values():
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        short = (element.value_tell + element.length > file_size if element.value is None
                 else len(element.value) < element.length)
        if short:
            raise InputError(f"The DICOM file {path} is truncated or damaged (element "
                             f"{element.tag} is {element.length} bytes long but the file ends first).")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:150]


def _value(ds, keyword: str, path: str, required: bool = True):
    """A tag value, with conversion errors of malformed values turned into one sentence."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises ValueError/TypeError... for bad values
        raise InputError(f"The DICOM file {path} has a malformed {keyword}.") from None
    if value is None or (isinstance(value, (str, bytes)) and not value):
        if required:
            raise InputError(f"The DICOM file {path} lacks {keyword}.")
        return None
    return value


def _numbers(source, keyword: str, count: int, path: str) -> np.ndarray:
    """`count` finite numbers from a tag of a dataset or functional-group item."""
    value = _value(source, keyword, path)
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        values = np.asarray([float(v) for v in items], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"The DICOM file {path} has a malformed {keyword} ({str(value)[:60]}).") from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise InputError(f"The DICOM file {path} has an invalid {keyword} ({str(value)[:60]}); "
                         f"{count} finite numbers are needed.")
    return values


def _text(ds, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001
        return ""


# ---- the folder -------------------------------------------------------------------------------

@_quiet
def scan_folder(folder: str | os.PathLike) -> tuple[list[DicomSeries], list[str]]:
    """The image series in `folder` (not recursive), grouped by SeriesInstanceUID, and the files
    left out with the reason ("name (not DICOM)", "name (SEG object)", ...).

    Non-DICOM files and non-image objects (SEG, RTSTRUCT, SR, DICOMDIR...) are left out; a damaged
    DICOM file raises InputError naming it. (`dicom_study` finds series at any depth.)
    """
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise InputError(f"The folder {folder} cannot be listed ({exc.strerror}).") from None
    return group_series([folder / name for name in names if not (folder / name).is_dir()], folder)


@_quiet
def group_series(paths: Sequence[Path], root: Path) -> tuple[list[DicomSeries], list[str]]:
    """Read the header of each file and group the image slices by SeriesInstanceUID.

    Returns the series (in order of first appearance) and the files left out with the reason,
    named relative to `root` ("SE2/IM1 (not DICOM)"); a damaged DICOM file raises InputError.
    """
    groups: dict[str, dict] = {}
    skipped: list[str] = []
    for path in paths:
        shown = os.path.relpath(path, root)
        if not path.is_file():  # FIFOs or devices would block a reader
            skipped.append(f"{shown} (not a regular file)")
            continue
        ds = read_header(path)
        reason = "not DICOM" if ds is None else _not_volume_reason(ds)
        if reason:
            skipped.append(f"{shown} ({reason})")
            continue
        uid = _text(ds, "SeriesInstanceUID")
        group = groups.setdefault(uid, {"files": [], "headers": []})
        group["files"].append(str(path))
        group["headers"].append(ds)
    series = [DicomSeries(uid, _text(g["headers"][0], "SeriesNumber"),
                          _text(g["headers"][0], "SeriesDescription"), _text(g["headers"][0], "Modality"),
                          tuple(g["files"]), headers=tuple(g["headers"])) for uid, g in groups.items()]
    return series, skipped


def _not_volume_reason(ds) -> str:
    """Why a DICOM object is not a slice of an image volume ('' if it is one)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(meta, "MediaStorageSOPClassUID") if meta is not None else ""
    if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR"
    modality = _text(ds, "Modality").upper()
    if modality in NON_VOLUME_MODALITIES:
        return f"{modality} object"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "no pixel data"
    return ""


# ---- one series -------------------------------------------------------------------------------

def _check_pixel_format(ds, path: str) -> tuple:
    """Refuse pixel formats that are not a grey-scale CT-like image; return the format key."""
    meta = getattr(ds, "file_meta", None)
    syntax = (_text(meta, "TransferSyntaxUID") if meta is not None else "") or "1.2.840.10008.1.2"
    if syntax not in NATIVE_TRANSFER_SYNTAXES | ENCAPSULATED_TRANSFER_SYNTAXES:
        raise InputError(f"The DICOM file {path} uses a transfer syntax ({syntax}) that cannot be decoded here.")
    rows, columns = int(_value(ds, "Rows", path)), int(_value(ds, "Columns", path))
    samples = int(_value(ds, "SamplesPerPixel", path))
    bits = int(_value(ds, "BitsAllocated", path))
    stored = int(_value(ds, "BitsStored", path))
    photometric = str(_value(ds, "PhotometricInterpretation", path)).strip().upper()
    representation = int(_value(ds, "PixelRepresentation", path))
    frames_text = _value(ds, "NumberOfFrames", path, required=False)
    try:
        frames = int(frames_text) if frames_text is not None else 1
    except (TypeError, ValueError):
        raise InputError(f"The DICOM file {path} has a malformed NumberOfFrames.") from None
    if rows < 1 or columns < 1 or frames < 1:
        raise InputError(f"The DICOM file {path} declares an empty image ({columns} x {rows} pixels, "
                         f"{frames} frames).")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        shown = photometric or "none"
        raise InputError(f"The DICOM file {path} is not a grey-scale image (PhotometricInterpretation "
                         f"{shown}, {samples} samples per pixel); a grey-scale CT is needed.")
    if bits not in (8, 16, 32) or not 1 <= stored <= bits or representation not in (0, 1):
        raise InputError(f"The DICOM file {path} has an unsupported pixel format ({bits} bits allocated, "
                         f"{stored} stored, pixel representation {representation}).")
    if _value(ds, "SpacingBetweenSlices", path, required=False) is not None:
        # Not used for the geometry (positions are), but ITK refuses a zero value while decoding.
        if _numbers(ds, "SpacingBetweenSlices", 1, path)[0] == 0:
            raise InputError(f"The DICOM file {path} has a SpacingBetweenSlices of 0.")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if _value(ds, keyword, path, required=False) is not None:  # absent: ITK assumes 1 and 0
            number = _numbers(ds, keyword, 1, path)[0]
            if keyword == "RescaleSlope" and number == 0:
                raise InputError(f"The DICOM file {path} has a RescaleSlope of 0.")
            if abs(number) > 1e6:
                raise InputError(f"The DICOM file {path} has an implausible {keyword} ({number:g}).")
    if syntax in NATIVE_TRANSFER_SYNTAXES and syntax != "1.2.840.10008.1.2.1.99":
        from pydicom.dataelem import RawDataElement

        element = ds._dict.get(0x7FE00010) if hasattr(ds, "_dict") else None
        length = element.length if isinstance(element, RawDataElement) else len(ds.PixelData)
        expected = rows * columns * frames * bits // 8
        if length not in (expected, expected + 1):
            tags = "Rows, Columns, BitsAllocated" + (f" and NumberOfFrames ({frames})" if frames > 1 else "")
            raise InputError(f"The DICOM file {path} holds {length} bytes of pixel data but its "
                             f"{tags} need {expected}; the tags contradict the data.")
    return (rows, columns, bits, representation), frames


def _plane(orientation_source, spacing_source, path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Row and column direction cosines and (x, y) pixel spacing of one image or frame."""
    orientation = _numbers(orientation_source, "ImageOrientationPatient", 6, path)
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise InputError(f"The DICOM file {path} has an invalid ImageOrientationPatient "
                         "(its two directions are not perpendicular unit vectors).")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    spacing = _numbers(spacing_source, "PixelSpacing", 2, path)
    if spacing.min() < 1e-4 or spacing.max() > 1e4:
        raise InputError(f"The DICOM file {path} has an implausible PixelSpacing {spacing.tolist()}.")
    # DICOM PixelSpacing is (between rows, between columns) = (y, x).
    return row, col, (float(spacing[1]), float(spacing[0]))


def _position(source, path: str) -> np.ndarray:
    position = _numbers(source, "ImagePositionPatient", 3, path)
    if np.abs(position).max() > POSITION_LIMIT_MM:
        raise InputError(f"The DICOM file {path} has an implausible ImagePositionPatient {position.tolist()}.")
    return position


@_quiet
def check_series_geometry(files: Sequence[str], headers: Sequence = ()) -> StackGeometry:
    """Validate the files of one series and measure where each slice lies.

    Raises InputError for anything that cannot become one correct volume: damaged files, colour or
    contradictory pixel formats, missing or malformed geometry tags, slices with different sizes,
    spacings or orientations, duplicate positions, or gaps of more than MAX_GAP_STEPS slices.
    Uneven spacing and sheared (gantry-tilted) stacks are returned (`.regular` is False) so the
    caller can resample them through physical space. `headers`: the files' datasets if already
    read (by `scan_folder`), to avoid reading every file twice.
    """
    if not files:
        raise InputError("The DICOM series holds no files.")
    if len(headers) != len(files):
        headers = [read_header(f) for f in files]
    for ds, f in zip(headers, files):
        if ds is None:
            raise InputError(f"The file {f} is not a DICOM file.")
    if len(files) == 1:
        return _frames_geometry(headers[0], str(files[0]))
    formats = [_check_pixel_format(ds, str(f)) for ds, f in zip(headers, files)]
    if any(frames > 1 for _, frames in formats):
        raise InputError("The DICOM series mixes multi-frame and single-frame files; it cannot be "
                         "read as one volume.")
    if len({fmt for fmt, _ in formats}) > 1:
        sizes = sorted({f"{c}x{r} {b}-bit" for (r, c, b, _), _ in formats})
        raise InputError(f"The DICOM slices have different sizes or pixel formats ({', '.join(sizes)}); "
                         "they do not form one volume.")
    planes = [_plane(ds, ds, str(f)) for ds, f in zip(headers, files)]
    positions = np.asarray([_position(ds, str(f)) for ds, f in zip(headers, files)])
    (rows, columns, _, _), _ = formats[0]
    check_fits_in_memory(f"The DICOM series ({len(files)} slices of {columns} x {rows} pixels)",
                         rows * columns * len(files) * 4)
    return _stack(list(map(str, files)), None, positions, planes, (columns, rows))


def _frames_geometry(ds, path: str) -> StackGeometry:
    """Geometry of a multi-frame file from its per-frame (or shared) functional groups."""
    (rows, columns, _, _), frames = _check_pixel_format(ds, path)
    check_fits_in_memory(f"The DICOM file {path} ({frames} frames of {columns} x {rows} pixels)",
                         rows * columns * frames * 4)
    if frames < 2:
        raise InputError("The DICOM series has a single slice; a 3D volume is needed.")
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    except Exception:  # noqa: BLE001
        raise InputError(f"The DICOM file {path} has malformed functional group sequences.") from None
    if not per_frame or len(per_frame) != frames:
        raise InputError(f"The multi-frame DICOM file {path} lacks per-frame positions "
                         "(PerFrameFunctionalGroupsSequence); its slice geometry is unknown.")

    def group(item, keyword):
        for source in (item, shared):
            if source is not None and keyword in source and len(source[keyword].value):
                return source[keyword].value[0]
        raise InputError(f"The multi-frame DICOM file {path} lacks {keyword} for a frame.")

    planes, positions = [], []
    for item in per_frame:
        planes.append(_plane(group(item, "PlaneOrientationSequence"),
                             group(item, "PixelMeasuresSequence"), path))
        positions.append(_position(group(item, "PlanePositionSequence"), path))
    return _stack([path], list(range(frames)), np.asarray(positions), planes, (columns, rows))


def _stack(files: list[str], frames: list[int] | None, positions: np.ndarray, planes: list,
           size: tuple[int, int]) -> StackGeometry:
    """Sort slices along their normal and refuse what cannot be resampled into one volume."""
    # File names (the folder is the user's input) or frame numbers, for messages.
    names = [Path(f).name for f in files] if frames is None else [f"frame {i + 1}" for i in frames]
    row, col, pixel_spacing = planes[0]
    for (r, c, s), name in zip(planes, names):
        if max(np.abs(r - row).max(), np.abs(c - col).max()) > ORIENTATION_TOLERANCE:
            raise InputError(f"The DICOM slices have different orientations ({names[0]} and {name}); "
                             "they do not form one volume.")
        if not np.allclose(s, pixel_spacing, rtol=1e-4, atol=1e-6):
            raise InputError(f"The DICOM slices have different pixel spacings ({names[0]} and {name}); "
                             "they do not form one volume.")
    normal = np.cross(row, col)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        a, b = names[order[duplicate[0]]], names[order[duplicate[0] + 1]]
        raise InputError(f"The DICOM series has two slices at the same position ({a} and {b}; "
                         "duplicates, or two acquisitions mixed in one series).")
    median = float(np.median(steps))
    if steps.max() > MAX_GAP_STEPS * median:
        k = int(np.argmax(steps))
        raise InputError(f"The DICOM series has a gap of {steps[k]:.3g} mm between slices "
                         f"{names[order[k]]} and {names[order[k + 1]]} where the usual step is "
                         f"{median:.3g} mm (missing slices); it cannot be read as one volume.")
    geometry = StackGeometry(
        files=tuple(np.asarray(files)[order]) if frames is None else tuple(files),
        frames=None if frames is None else tuple(int(frames[i]) for i in order),
        positions=positions[order], row=row, col=col, pixel_spacing=pixel_spacing, size=size)
    if geometry.sheared:
        offsets = np.abs(geometry.in_plane_offsets).max(axis=0) / np.asarray(pixel_spacing)
        if np.any(offsets > np.asarray(size)):
            raise InputError("The DICOM slices are shifted sideways by more than an image width "
                             "along the stack; they do not form one volume.")
    return geometry

"""Reading and writing CT volumes and label maps with their exact physical geometry.

SimpleITK decodes every format (NIfTI, NRRD, MHA, DICOM series, including JPEG 2000 and rescale
slope/intercept through GDCM) in ITK's LPS physical convention; Slicer's RAS is converted only in
the Slicer module. ITK trusts what files say, so headers are checked first (`header_checks`),
DICOM series are found, validated and measured with pydicom (`dicom_checks`), irregular stacks
are resampled through physical space (`stack_resample`), and outputs are written atomically,
verified and flushed (`atomic`). Every failure is one InputError/CoralBayError sentence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import atomic_file
from coralbay.errors import CoralBayError, InputError, UsageError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), path.suffix.lower())


GEOMETRY_NOTE_KEY = "coralbay:geometry_note"  # image metadata: how an irregular series was regularised
ORIENTATION_NOTE_KEY = "coralbay:orientation_note"  # image metadata: the header states no orientation
SERIES_NUMBER_KEY = "coralbay:dicom_series_number"  # image metadata: which series of a DICOM folder was read
SERIES_UID_KEY = "coralbay:dicom_series_uid"
SPACING_RANGE_MM = (1e-4, 1e4)  # outside this, a header is wrong, not a scanner (header_checks too)
ORIGIN_LIMIT_MM = 1e7
log = logging.getLogger("coralbay.io")
T = TypeVar("T")


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """Capture what C++ libraries (MetaIO, GDCM, ITK warnings) print on file descriptor 2.

    Why: those lines would precede our one-sentence error on the user's terminal. The captured
    text is logged at debug level (CORALBAY_DEBUG shows it) and offered for the error message.
    """
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (some embedded interpreters): capture nothing
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(65536).decode("utf-8", "replace").strip()
            if text:
                captured.extend(text.splitlines())
                log.debug("native library output: %s", text)


# Noise in ITK exception texts: source locations, object addresses, library prefixes, and the
# generic "trouble reading" lines that wrap the one line saying what is actually wrong.
_ITK_PREFIXES = re.compile(r"^(\*\* ERROR:|sitk::ERROR:|itk::ERROR:|ITK ERROR:|Exception thrown in SimpleITK \w+:)\s*|"
                           r"^\w+\(0x[0-9a-fA-F]+\):\s*|^\[nrrd\]\s*\w+:\s*|^(MetaObject|MetaImage):\s*\w+:\s*")
_USELESS = re.compile(r"(\.(cxx|hxx|cpp|h):\d+:?$)|^[-\d.\s\[\],]*$|^Reason: |^Refusing to change|trouble|"
                      r"^(Read|ReadImageInformation): Error reading|MET_Read Failed|Cannot parse file|"
                      r"Error parsing file|cannot be read|Unable to determine ImageIO|^File cannot be read")


def _clean_line(line: str) -> str:
    line = line.strip()
    for _ in range(3):
        line = _ITK_PREFIXES.sub("", line).strip()
    line = re.sub(r"\(?0x[0-9a-fA-F]{4,}\)?", "", line)
    line = re.sub(r"(/[^\s\"':]+)+/([^\s\"'/:]+)", r"\2", line)  # paths -> file names
    return re.sub(r"\b_?nrrd\w*:\s*|\bMET_\w+:?\s*|\b\w+::\w+\b", "", line).strip(" :")


def _itk_reason(exc: BaseException, native: Sequence[str] = ()) -> str:
    """The informative part of an ITK/GDCM/MetaIO error, as a short phrase without internals.

    ITK wraps the root cause in several generic lines; the cause is the last informative line of
    the exception, or else the first one the library printed on stderr.
    """
    def informative(lines):
        cleaned = (_clean_line(line) for line in lines)
        return [c for c in cleaned if c and not _USELESS.search(c) and re.search(r"[A-Za-z]{3}", c)]

    from_exception, from_native = informative(str(exc).splitlines()), informative(native)
    text = str(exc)
    if "allocate" in text.lower():
        return "there is not enough memory to read it"
    if from_exception:
        reason = from_exception[-1]
    elif from_native:
        reason = from_native[0]
    elif "Unable to determine ImageIO" in text:
        reason = "its format is not recognised"
    else:
        reason = "its header or data is malformed"
    return reason[:160].rstrip(". ")


def _run_itk(action: Callable[[], T], failure: str) -> T:
    """Run an ITK call; on failure raise InputError `failure (reason).` without C++ noise."""
    with _native_stderr_captured() as native:
        try:
            return action()
        except RuntimeError as exc:
            error = exc
    raise InputError(f"{failure} ({_itk_reason(error, native)}).") from None


def _series_geometry(folder: str | os.PathLike, series: str | None = None):
    """The chosen series of the study in `folder` (`dicom_study`: `series` is a SeriesNumber or
    SeriesInstanceUID, None for the automatic choice) and its validated, measured geometry."""
    from coralbay.io.dicom_study import select_series  # lazy: pydicom

    study, chosen = select_series(folder, series)
    if chosen.error is not None:
        if not study.skipped or not study.plain_series_folder:
            raise chosen.error
        raise InputError(f"{str(chosen.error).rstrip('.')}; {study.left_out()}.")
    return chosen.series, chosen.geometry


def dicom_series_files(folder: str | os.PathLike, series: str | None = None) -> list[str]:
    """The files of the chosen DICOM series in `folder`, in the slice order of `read_dicom_series`.

    Why separate: DICOM SEG reading and writing must pair each slice of the volume with the
    SOP instance it came from. A series that `read_dicom_series` resamples (uneven spacing,
    gantry tilt) has no such pairing, so it is refused here with a sentence saying why.
    """
    _, geometry = _series_geometry(folder, series)
    if not geometry.regular:
        raise InputError(f"The DICOM series in {folder} has {geometry.irregularity()}; its volume is "
                         "resampled, so its slices cannot be paired with its files one by one (as a "
                         "DICOM SEG needs).")
    return list(geometry.files)


def read_dicom_series(folder: Path, series: str | None = None) -> sitk.Image:
    """Read one DICOM image series of the study in `folder` as a correct regular volume.

    The series is chosen (`series`: SeriesNumber or SeriesInstanceUID; None: the only one, or the
    only regular CT volume, see `dicom_study`), validated with pydicom (`dicom_checks`), its pixels
    decoded by ITK in the validated order, and its geometry set from the measured slice positions.
    Unevenly spaced or sheared (gantry-tilted) stacks are resampled through physical space
    (`stack_resample`) and say so in the image's GEOMETRY_NOTE_KEY metadata and in a logged
    warning. The series read is named in the SERIES_NUMBER_KEY and SERIES_UID_KEY metadata.
    """
    chosen, geometry = _series_geometry(folder, series)
    image = _decode_series(folder, geometry)
    image.SetMetaData(SERIES_NUMBER_KEY, chosen.number)
    image.SetMetaData(SERIES_UID_KEY, chosen.uid)
    return image


def series_read(image: sitk.Image) -> dict[str, str]:
    """Which DICOM series `image` was read from ({"series": number, "series_uid": UID}; {} for a file)."""
    if not image.HasMetaDataKey(SERIES_UID_KEY):
        return {}
    return {"series": image.GetMetaData(SERIES_NUMBER_KEY), "series_uid": image.GetMetaData(SERIES_UID_KEY)}


def _decode_series(folder: Path, geometry) -> sitk.Image:
    """Decode the validated files of `geometry` with ITK onto the measured (or resampled) grid."""
    if len(geometry.files) == 1:  # one multi-frame file (the series reader would add a 4th axis)
        reader = sitk.ImageFileReader()
        reader.SetFileName(geometry.files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(geometry.files))
    image = _run_itk(reader.Execute, f"The DICOM series in {folder} cannot be decoded")
    columns, rows = geometry.size
    expected = (columns, rows, len(geometry.positions))
    if image.GetDimension() != 3 or image.GetSize() != expected or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The DICOM series in {folder} decoded to {image.GetSize()} voxels where its "
                         f"tags describe {expected}; the files are inconsistent.")
    if geometry.frames is not None and list(geometry.frames) != sorted(geometry.frames):
        array = sitk.GetArrayFromImage(image)[list(geometry.frames)]  # frames into stacking order
        image = sitk.GetImageFromArray(array)
    if geometry.regular:
        dx, dy = geometry.pixel_spacing
        image.SetSpacing((dx, dy, geometry.median_step))
        image.SetOrigin(tuple(float(v) for v in geometry.positions[0]))
        image.SetDirection(tuple(np.stack([geometry.row, geometry.col, geometry.normal], axis=1).ravel()))
        return image
    from coralbay.io.stack_resample import resample_stack

    regular = resample_stack(sitk.GetArrayViewFromImage(image), geometry)
    note = (f"The DICOM series in {folder} has {geometry.irregularity()}; it was resampled onto a "
            f"regular {regular.GetSpacing()[2]:.3g} mm grid by linear interpolation through physical space.")
    regular.SetMetaData(GEOMETRY_NOTE_KEY, note)
    log.warning(note)
    return regular


def read_image_any(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read a file or DICOM folder (a series or a study: `series` chooses one, see
    `read_dicom_series`) without checks on dimension or content.

    Files: the header is read first and checked (`header_checks`) before ITK allocates and reads
    the voxels, so a hostile header is refused instead of exhausting memory or blocking, and
    compressed voxel data is verified to its end (length and checksum), so a file cut short or
    damaged is refused instead of read with zeros in place of the missing part.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"The input {p} does not exist.")
    if p.is_dir():
        return read_dicom_series(p, series)
    if series is not None:
        raise UsageError(f"--series chooses a series of a DICOM folder, but the input {p} is a file.")
    if not p.is_file():
        raise InputError(f"The input {p} is not a regular file.")
    if p.stat().st_size == 0:
        raise InputError(f"The input file {p} is empty.")
    from coralbay.io.header_checks import check_compressed_data, check_declared_size, check_header

    payload = check_compressed_data(check_header(p))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    failure = f"The file {p} cannot be read as a medical image"
    _run_itk(reader.ReadImageInformation, failure)
    check_declared_size(p, payload, reader.GetSize(), reader.GetNumberOfComponents(),
                        sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    image = _run_itk(reader.Execute, failure)
    if payload.orientation_stated is False:
        # ITK takes the axes as LPS-aligned (identity directions); say so instead of guessing silently.
        note = (f"The header of {p.name} states no orientation; its axes were taken as LPS "
                f"(identity direction), so left/right and front/back may be wrong.")
        image.SetMetaData(ORIENTATION_NOTE_KEY, note)  # `read_volume` warns once the volume passed its checks
    return image


def check_volume(image: sitk.Image, source: str) -> sitk.Image:
    """Refuse what is not a non-empty, finite, single-component 3D volume on a sane grid."""
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputError(f"{source} is a {dim}D image; a 3D volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source} has {image.GetNumberOfComponentsPerPixel()} components per "
                         "voxel; a single-channel (grey-scale) volume is needed.")
    size = image.GetSize()
    if min(size) < 1 or np.prod(size) == 0:
        raise InputError(f"{source} is empty (size {size}).")
    if min(size) == 1 and sum(s > 1 for s in size) < 3:
        raise InputError(f"{source} is a single slice (size {size}); a 3D volume is needed.")
    spacing = image.GetSpacing()
    low, high = SPACING_RANGE_MM
    if not all(np.isfinite(s) and low <= s <= high for s in spacing):
        raise InputError(f"{source} has an implausible voxel spacing {tuple(float(f'{s:.4g}') for s in spacing)} mm.")
    origin = np.asarray(image.GetOrigin(), dtype=float)
    if not np.all(np.isfinite(origin)) or np.abs(origin).max() > ORIGIN_LIMIT_MM:
        raise InputError(f"{source} has an implausible origin {tuple(float(f'{o:.4g}') for o in origin)} mm.")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise InputError(f"{source} has an invalid orientation matrix (not a rotation: sheared or degenerate axes).")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.all(np.isfinite(sitk.GetArrayViewFromImage(image))):
            raise InputError(f"{source} contains NaN or infinite voxel values.")
    return image


def read_volume(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read and check a 3D scalar volume from a file or a DICOM folder (series or study; `series`
    chooses one by SeriesNumber or SeriesInstanceUID); warn when its header states no orientation
    (its axes were then taken as LPS)."""
    image = check_volume(read_image_any(path, series), f"The input {path}")
    if image.HasMetaDataKey(ORIENTATION_NOTE_KEY):
        log.warning(image.GetMetaData(ORIENTATION_NOTE_KEY))
    return image


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output path whose folder is missing or whose extension we cannot write (a usage
    error, exit 2, like every wrong output name: docs/cli.md#exit-codes-and-outputs)."""
    p = Path(path)
    if _suffix(p) not in WRITABLE_SUFFIXES:
        raise UsageError(f"The output {p} must end in one of {', '.join(WRITABLE_SUFFIXES)}.")
    if not p.parent.exists() and str(p.parent):
        raise UsageError(f"The output folder {p.parent} does not exist.")
    if p.is_dir():
        raise UsageError(f"The output {p} is a folder; give a file name.")
    return p


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image atomically (temporary name, checked, flushed, then renamed)."""
    p = check_output_path(path)
    with atomic_file(p) as tmp:
        write_image_verified(image, tmp, compress, target=p)
    return p


def write_image_verified(image: sitk.Image, path: str | os.PathLike, compress: bool = True,
                         target: str | os.PathLike | None = None) -> None:
    """Write `image` to exactly `path` (the temporary of an atomic write) and prove it complete.

    Use this, not sitk.WriteImage, inside `atomic_file`/`atomic_dir`: ITK's NIfTI writer reports a
    short write (disk full, file-size limit) only on stderr and returns normally, so its stderr
    is checked and the written file read back (`_verify_written`); any failure is one
    CoralBayError sentence naming `target` (the final output name), never the temporary.
    """
    path = Path(path)
    shown = Path(target) if target is not None else path
    with _native_stderr_captured() as native:
        try:
            sitk.WriteImage(image, str(path), compress)
            failure = None
        except RuntimeError as exc:
            failure = exc
    errors = [line for line in native if "error" in line.lower()]
    if failure is not None or errors:
        causes = re.findall(r"Reason: (.+)", str(failure or ""))  # the errno text, if ITK kept it
        reason = causes[-1].strip() if causes else _itk_reason(failure, native) if failure is not None \
            else _clean_line(errors[0])
        reason = reason.replace(str(path), shown.name).replace(path.name, shown.name)
        raise CoralBayError(f"Writing {shown} failed ({reason}); any earlier file of that name is unchanged.")
    _verify_written(path, image, shown)


def _verify_written(path: Path, image: sitk.Image, target: Path) -> None:
    """Refuse a written file whose header or voxel data is not the whole image.

    Header: size and pixel type as written. Data: a gzip file (.nii.gz) is decompressed to its
    end (a truncated stream fails there, and its length must hold every voxel); an uncompressed
    file must be long enough. Compressed NRRD/MetaImage writers raise on short writes themselves.
    """
    import gzip
    import zlib

    from coralbay.io.header_checks import pixel_bytes

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    failure = f"Writing {target} failed: the written file is incomplete (disk full or a file-size " \
              "limit?); any earlier file of that name is unchanged."
    with _native_stderr_captured():
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise CoralBayError(failure) from None
    if reader.GetSize() != image.GetSize() or reader.GetPixelID() != image.GetPixelID():
        raise CoralBayError(failure)
    needed = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() * \
        pixel_bytes(image.GetPixelIDTypeAsString())
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        except (OSError, EOFError, zlib.error):
            raise CoralBayError(failure) from None
        if total < needed:
            raise CoralBayError(failure)
    elif _suffix(path) in (".nii", ".nrrd", ".mha") and not _compressed_container(path) \
            and path.stat().st_size < needed:
        raise CoralBayError(failure)


def _compressed_container(path: Path) -> bool:
    """True for NRRD/MetaImage files whose voxels are compressed inside (header says so)."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("latin-1").lower()
    return "encoding: gzip" in head or "compresseddata = true" in head


def ct_intensity_warning(image: sitk.Image) -> str | None:
    """A warning sentence when the intensities do not look like CT in Hounsfield units."""
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, array.size // 2_000_000)
    sample = np.asarray(array).reshape(-1)[::step].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if lo > -500 or hi < 0 or hi > 5000 or lo < -3100:
        return (f"Intensities do not look like CT in Hounsfield units (0.5-99.5 percentile "
                f"{lo:.0f}..{hi:.0f}); results may be meaningless.")
    return None


def volume_info(image: sitk.Image) -> dict:
    """Geometry and intensity summary (what `coralbay info` prints)."""
    array = sitk.GetArrayViewFromImage(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    size = image.GetSize()
    spacing = image.GetSpacing()
    return {
        "size": list(size),
        "spacing_mm": [round(s, 6) for s in spacing],
        "origin_mm_lps": [round(o, 6) for o in image.GetOrigin()],
        "direction": [round(d, 6) for d in direction.reshape(-1)],
        "orientation": orientation,
        "extent_mm": [round(n * s, 3) for n, s in zip(size, spacing)],
        "voxel_volume_ml": float(np.prod(spacing)) / 1000.0,
        "pixel_type": image.GetPixelIDTypeAsString(),
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": float(array.mean(dtype=np.float64)),
        "warning": ct_intensity_warning(image),
        "note": image.GetMetaData(GEOMETRY_NOTE_KEY) if image.HasMetaDataKey(GEOMETRY_NOTE_KEY) else None,
        "orientation_warning": (image.GetMetaData(ORIENTATION_NOTE_KEY)
                                if image.HasMetaDataKey(ORIENTATION_NOTE_KEY) else None),
        "dicom_series": series_read(image) or None,
    }

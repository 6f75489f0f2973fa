"""Reading and writing CT volumes and label maps with their exact physical geometry.

SimpleITK is the single reader: it gives every format (NIfTI, NRRD, MHA, DICOM series, including
JPEG 2000 and rescale slope/intercept through GDCM) in ITK's LPS physical convention, so geometry
is handled in one place. Slicer's RAS is converted only in the Slicer module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import atomic_file
from coralbay.errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), path.suffix.lower())


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the one DICOM series in `folder`, in the slice order of `read_dicom_series`.

    Why separate: DICOM SEG reading and writing must pair each slice of the volume with the
    SOP instance it came from, in exactly the order GDCM stacks them.
    """
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"The folder {folder} holds no DICOM image series.")
    if len(series_ids) > 1:
        raise InputError(f"The folder {folder} holds {len(series_ids)} DICOM series; "
                         "put each series in its own folder.")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


def read_dicom_series(folder: Path) -> sitk.Image:
    """Read the one DICOM series in `folder` (a folder with several series is refused, by name)."""
    files = dicom_series_files(folder)
    from coralbay.dicom_checks import check_series_geometry  # lazy: pydicom only for DICOM
    check_series_geometry(files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"The DICOM series in {folder} cannot be decoded ({_first_line(exc)}).") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    useful = [t for t in text if t.strip() and not t.startswith(("/", "sitk::"))]
    return (useful[-1] if useful else (text[-1] if text else type(exc).__name__)).strip()[:200]


def read_image_any(path: str | os.PathLike) -> sitk.Image:
    """Read a file or DICOM folder without checks on dimension or content."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"The input {p} does not exist.")
    if p.is_dir():
        return read_dicom_series(p)
    if p.stat().st_size == 0:
        raise InputError(f"The input file {p} is empty.")
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(f"The file {p} cannot be read as a medical image ({_first_line(exc)}).") from None


def check_volume(image: sitk.Image, source: str) -> sitk.Image:
    """Refuse what is not a non-empty, finite, single-component 3D volume."""
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
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{source} has an invalid voxel spacing {spacing}.")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise InputError(f"{source} has an invalid orientation matrix.")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.all(np.isfinite(sitk.GetArrayViewFromImage(image))):
            raise InputError(f"{source} contains NaN or infinite voxel values.")
    return image


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read and check a 3D scalar volume from a file or a DICOM series folder."""
    return check_volume(read_image_any(path), f"The input {path}")


def read_label_map(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D label map and return it as UInt16; refuse non-integer or negative labels."""
    image = read_volume(path)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(f"The label map {path} has non-integer values; labels must be integers.")
    if array.size and array.min() < 0:
        raise InputError(f"The label map {path} has negative values; labels must be 0 or positive.")
    if array.size and array.max() > 65535:
        raise InputError(f"The label map {path} has label values above 65535.")
    return sitk.Cast(image, sitk.sitkUInt16)


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output path whose folder is missing or whose extension we cannot write."""
    p = Path(path)
    if _suffix(p) not in WRITABLE_SUFFIXES:
        raise InputError(f"The output {p} must end in one of {', '.join(WRITABLE_SUFFIXES)}.")
    if not p.parent.exists() and str(p.parent):
        raise InputError(f"The output folder {p.parent} does not exist.")
    if p.is_dir():
        raise InputError(f"The output {p} is a folder; give a file name.")
    return p


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image atomically (temporary name, then rename)."""
    p = check_output_path(path)
    with atomic_file(p) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return p


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within `tol`)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


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
    }
